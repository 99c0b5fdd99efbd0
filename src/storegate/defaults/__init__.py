"""Embedded default configuration (the demo store)."""
