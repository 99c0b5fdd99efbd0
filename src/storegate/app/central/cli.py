"""``storegate central``: run the reference central service (docs/central.md).

Wires the parts: storage (SQLite path or postgresql:// URL), ingest, the MQTT source
(a shared subscription, so several instances split the stream), the signed command
sender, the gap scanner (replay on a gap) and the retailer's HTTP API. Secrets come
from the environment: ``STOREGATE_CENTRAL_TOKENS`` (API bearer tokens, comma
separated) and ``STOREGATE_CENTRAL_MQTT_PASSWORD``. The rest of the module is imported
only when the command runs, so ``storegate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from storegate.errors import DataFileError, UsageError

log = logging.getLogger(__name__)

ENV_TOKENS: Final = "STOREGATE_CENTRAL_TOKENS"
ENV_MQTT_PASSWORD: Final = "STOREGATE_CENTRAL_MQTT_PASSWORD"  # noqa: S105 - a name


def add_parser(sub: Any, add_config: Callable[[argparse.ArgumentParser], None],
               config_of: Callable[[argparse.Namespace], Any]) -> None:
    p = sub.add_parser("central", help="run the reference central service: ingest every "
                       "store's events, profiles, signed commands, the retailer's API")
    p.add_argument("--storage", default="central.db", metavar="URL",
                   help="SQLite file path (default central.db) or postgresql://...")
    p.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL",
                   help="SQLite durability (FULL survives power loss)")
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--mqtt-username", default=None)
    p.add_argument("--client-id", default=None,
                   help="MQTT client id (default central-<hostname>-<pid>); keep it "
                   "stable across restarts for the persistent session")
    p.add_argument("--group", default="central",
                   help="shared-subscription group: instances with one group split the "
                   "stream")
    # a fleet on a NATS cluster (docs/fleet.md, app/central/fleet.py)
    p.add_argument("--source", default=None, metavar="URL",
                   help="tls://[user@]host:4222,host:4222,...: read events from the "
                   "cluster's JetStream stream (password in STOREGATE_NATS_PASSWORD); "
                   "commands then go to the cluster's MQTT listeners: --mqtt-host "
                   "host:8883,host:8883,... (each node's, failed over in turn)")
    p.add_argument("--mqtt-cafile", default=None, metavar="FILE",
                   help="MQTT over TLS, trusting this CA (a NATS cluster's MQTT listener)")
    p.add_argument("--nats-cafile", default=None, metavar="FILE",
                   help="--source over TLS, trusting this CA (the one that issued the "
                   "NATS nodes' certificates; default: the system's trust store)")
    p.add_argument("--key", metavar="FILE", default=None,
                   help="central's Ed25519 signing key (storegate keys new-central); "
                   "without it no command is sent (ingest only)")
    p.add_argument("--kid", default="central", help="the key's id in gateways' [trust]")
    p.add_argument("--tombstone-key", metavar="FILE", default=None,
                   help="the secret erasure tombstones are keyed under (made on first "
                   "start, mode 0600; the same file for every instance of one database). "
                   "Default: beside a SQLite file (<file>.tombstone-key); for PostgreSQL "
                   "without it, kept in the database (a warning)")
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8090, help="0: no HTTP API")
    p.add_argument("--categories", metavar="FILE", default=None,
                   help='JSON {"sku": {"SKU": "category"}, "keywords": {"word": '
                   '"category"}}: the profile\'s favourite categories')
    p.add_argument("--gap-interval", type=float, default=1.0, metavar="S",
                   help="seconds between gap scans; 0: this instance does not scan")
    p.add_argument("--gap-grace", type=float, default=2.0, metavar="S",
                   help="a gap open this long is asked for (replay)")

    def run(args: argparse.Namespace) -> int:
        return run_central(args)

    p.set_defaults(func=run)


def _categories(path: str | None) -> Any:
    from storegate.core.central.profile import CategoryMap  # noqa: PLC0415

    if path is None:
        return CategoryMap()
    try:
        raw = json.loads(Path(path).read_text())
        sku, words = raw.get("sku", {}), raw.get("keywords", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise DataFileError(path, f"not a category map: {exc}") from exc
    if not (isinstance(sku, dict) and isinstance(words, dict)):
        raise DataFileError(path, "not a category map: sku and keywords are objects")
    return CategoryMap({str(k): str(v) for k, v in sku.items()},
                       {str(k): str(v) for k, v in words.items()})


def run_central(args: argparse.Namespace) -> int:
    import socket  # noqa: PLC0415

    from storegate.adapters.central.mqtt_source import MqttSource  # noqa: PLC0415
    from storegate.adapters.central.storage import Database, Target  # noqa: PLC0415
    from storegate.adapters.mqtt_client import MqttSettings  # noqa: PLC0415
    from storegate.app.central.commands import Commands  # noqa: PLC0415
    from storegate.app.central.gaps import GapScanner, run_periodically  # noqa: PLC0415
    from storegate.app.central.ingest import Ingest  # noqa: PLC0415
    from storegate.app.central.service import CentralService  # noqa: PLC0415
    from storegate.app.keys import _signing_key  # noqa: PLC0415

    tokens = [t.strip() for t in os.environ.get(ENV_TOKENS, "").split(",") if t.strip()]
    if args.http_port and not tokens:
        raise UsageError(f"the HTTP API needs tokens: set {ENV_TOKENS} (comma separated), "
                         "or --http-port 0")
    categories = _categories(args.categories)
    key = _signing_key(args.key) if args.key else None
    db = Database(Target.parse(args.storage), synchronous=args.synchronous,
                  tombstone_key=Path(args.tombstone_key) if args.tombstone_key else None)
    ingest = Ingest(db)
    client_id = args.client_id or f"central-{socket.gethostname()}-{os.getpid()}"
    settings = MqttSettings(host=args.mqtt_host, port=args.mqtt_port, client_id=client_id,
                            username=args.mqtt_username,
                            password=os.environ.get(ENV_MQTT_PASSWORD))
    if args.mqtt_cafile:
        from dataclasses import replace  # noqa: PLC0415

        from storegate.adapters.mqtt_client import TlsSettings  # noqa: PLC0415

        settings = replace(settings, tls=TlsSettings(ca_file=Path(args.mqtt_cafile)))
    source: Any
    if args.source is not None:  # a fleet: events from NATS JetStream (docs/fleet.md)
        from storegate.app.central.fleet import source_from_url  # noqa: PLC0415

        source = source_from_url(args.source, ingest.handle_many, settings,
                                 ca_file=args.nats_cafile)
    else:
        source = MqttSource(settings, ingest.handle_many, group=args.group)
    commands = (Commands(db, key, args.kid, source.publish) if key is not None else None)
    service = CentralService(db, commands, categories=categories)
    scanner = GapScanner(db, commands, grace_s=args.gap_grace)
    stop = threading.Event()
    threads = []

    def tend(now: float) -> None:
        """A pass: gaps asked for; unacknowledged commands and pending erasures sent
        again; a new gateway (or seal key) synced."""
        scanner.scan(now)
        service.tend(now)

    if args.gap_interval > 0:
        threads.append(threading.Thread(
            target=run_periodically, args=(tend, time.time, stop, args.gap_interval),
            name="central-gaps", daemon=True))

    def status() -> dict[str, Any]:
        return {"client_id": client_id, "connected": source.connected.is_set(),
                "received": source.received, "handled": source.handled,
                "failures": source.failures, "last_error": source.last_error,
                "ingest": dict(ingest.counts), "storage": db.target.redacted()}

    source.start()
    for t in threads:
        t.start()
    log.info("central ready: storage %s, mqtt %s group %s, api %s", db.target.redacted(),
             settings.url, args.group,
             f"http://{args.http_host}:{args.http_port}" if args.http_port else "off")
    # uvicorn handles SIGTERM/SIGINT while it serves and raises them again afterwards
    # with the handler it found: this one, so the clean-up below runs either way.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.http_port:
            import uvicorn  # noqa: PLC0415

            from storegate.app.central.api import build_app  # noqa: PLC0415

            server = uvicorn.Server(uvicorn.Config(
                build_app(service, tokens, status=status), host=args.http_host,
                port=args.http_port, log_level="warning", access_log=False))
            server.run()
        else:
            stop.wait()
    finally:
        stop.set()
        source.stop()
        for t in threads:
            t.join(10)
        db.close()
        log.info("central stopped: %s", json.dumps(status()))
    return 0
