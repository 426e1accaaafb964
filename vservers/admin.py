"""Admin registrations for the vservers models (none yet)."""

from __future__ import annotations
