"""Frozen, typed values shared by server, agent and CLI; their JSON is the wire format."""
