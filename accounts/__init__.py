"""Sign-in, sign-out and password management for panel users (operators and tenant admins)."""
