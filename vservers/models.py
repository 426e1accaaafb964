"""Models of the panel: tenants' servers, plans, templates, address pools, operations.

Empty for now; the panel issue fills it (split into a models/ package by topic once it grows).
"""

from __future__ import annotations
