"""Presence: adverts in, store and zone visits out (pure, clock passed in)."""
