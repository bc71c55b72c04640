"""The data-plane section: container → container across two lab hosts, shoal against no
overlay, Docker Swarm, hand-written WireGuard and Nebula (`run.run_dataplane`)."""
