"""Simulation: a store of shoppers for the demo, the tests and the accuracy benchmark."""
