"""Service discovery DNS: a pure record table built from the netmap and an asyncio responder."""
