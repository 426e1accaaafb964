"""Views by audience: common (home, health), tenant (a customer's own servers) and operator."""
