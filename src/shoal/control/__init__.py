"""The control server: config, CA, tokens, IPAM, registry/mapper, use cases, HTTP API, wiring."""
