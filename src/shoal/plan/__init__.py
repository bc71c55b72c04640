"""Pure planning: (netmap, host facts) -> HostConfig, the desired state of every adapter."""
