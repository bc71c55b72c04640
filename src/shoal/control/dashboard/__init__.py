"""The web dashboard `shoal server` serves at /dashboard: hosts, paths, services and recent
events, read-only, for an admin token of scope read or wider (see `web`; `view` renders)."""
