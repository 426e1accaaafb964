"""Several nodes (issue 16): joining one to the panel (join), its worker's heartbeat
(heartbeat), what the pages and the API show of a node that went silent (status), and the
authorized_keys file each node keeps from the database for migrations (keys)."""
