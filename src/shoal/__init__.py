"""shoal: an always-encrypted WireGuard mesh for Docker containers across hosts."""

__version__ = "0.1.0"
