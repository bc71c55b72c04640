"""Benchmarks of shoal against the systems people would pick instead, in the project's lab."""
