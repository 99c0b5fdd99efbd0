"""``storegate central``: the reference central service (docs/central.md)."""
