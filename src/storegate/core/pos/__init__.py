"""POS lanes: pure parsers of what a lane's serial devices emit, and lane assembly."""
