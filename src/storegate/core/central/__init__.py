"""Central's pure logic: reading what gateways publish (envelope), sequence gaps and
the replays they call for, the customer profile, erasure fan-out (docs/central.md)."""
