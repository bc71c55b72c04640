"""Agent (and admin CLI) → control server: pinned TLS, typed requests, typed errors."""
