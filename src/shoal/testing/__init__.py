"""Builders for tests; production code never imports this package."""
