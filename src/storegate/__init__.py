"""storegate: an edge gateway for physical stores.

Layers, each a sub-package:

* ``core``      pure domain code: event contract, ids, topics, retention, backoff.
                Bytes and values in, values out; no I/O, no clock reads.
* ``adapters``  thin I/O edges: SQLite outbox, paho-mqtt publisher, status file.
* ``app``       the composition root (``gateway``), the CLI and logging.
* ``contract``  generators for the published contract (JSON Schemas, AsyncAPI).
* ``sim``       the simulated store, pure; its live halves for the demo are in ``app``.

Imports go one way (core <- adapters <- app); ``tests/test_layers.py`` checks it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("storegate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
