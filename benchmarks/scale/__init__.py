"""The control server at scale: N simulated agents (the product's `ControlClient` and
`NetworkMap.apply`) long-polling one real `shoal server` (see `measure`)."""
