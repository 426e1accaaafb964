"""The panel's SQLite database backend (panel.sqlite.base)."""
