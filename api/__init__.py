"""The panel's REST API (/api/v1/, docs/api.md) and the API tokens users make in the panel."""
