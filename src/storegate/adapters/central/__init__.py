"""Central's I/O edges: its storage (SQLite or PostgreSQL, one schema) and its MQTT
source."""
