"""Simulation: a store of shoppers for the demo, the tests and the accuracy benchmark.

Pure (seeded, no clock, no I/O); playing it live for the demo is ``app/sim_store.py``
and ``app/sim_lane.py``.
"""
