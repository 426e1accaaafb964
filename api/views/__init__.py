"""The API's views, by area: servers and operations (servers), accounts and services inside a
server (guest), what a tenant chooses from (catalog), and the operator's endpoints (operator)."""
