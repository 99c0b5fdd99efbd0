"""Everything ``run`` reads before it opens anything, in one place.

``storegate run`` builds its gateway from what :func:`load_start_files` returns, and
``storegate config check`` calls the same function and discards the result: a config
that passes the check cannot then stop ``run`` on a missing or broken file it names
(under systemd, ``RestartPreventExitStatus=2`` would leave the box dead until someone
logs in). Opening the outbox and the identity store stays with ``run``: checking must
not create them.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storegate.app.campaign_files import load_campaigns
from storegate.app.pos import PosService
from storegate.app.presence_files import config_beacons, load_identities
from storegate.config import Config, TlsConfig
from storegate.core import events as ev
from storegate.core.ble.eid import Identity
from storegate.core.personal.campaigns import Campaign
from storegate.core.presence.infrastructure import Infrastructure
from storegate.errors import DataFileError


@dataclass(frozen=True, slots=True)
class StartFiles:
    """What the config's files hold, read and validated."""

    registry: list[Identity]  # presence.identities_file
    beacons: Infrastructure  # presence.beacons_file
    pos: PosService | None  # the lanes, their receipt templates read
    warnings: tuple[str, ...]  # usable, but probably not what was meant
    campaigns: tuple[Campaign, ...] = ()  # offers.campaigns_file


def _discard(drafts: list[ev.EventDraft]) -> None:
    """``config check`` builds the lanes only to check them: nothing is ever fed."""


def load_start_files(config: Config, *,
                     submit: Callable[[list[ev.EventDraft]], None] = _discard,
                     wall_clock: Callable[[], float] = time.time) -> StartFiles:
    """Read and validate every file the config names. Raises :class:`DataFileError`
    naming the file (and entry) or :class:`ConfigError` naming the setting."""
    p = config.presence
    registry = load_identities(p.identities_file) if p.identities_file else []
    beacons = config_beacons(p)
    pos = PosService(config, submit=submit, wall_clock=wall_clock) if config.pos.lanes \
        else None
    if config.mqtt.tls is not None:
        check_tls(config.mqtt.tls)
    h = config.http
    if h.enabled and h.tls_cert_file is not None and h.tls_key_file is not None:
        check_server_tls(h.tls_cert_file, h.tls_key_file)
    zones = {z.id for z in p.zones}
    warnings = tuple(f"beacon {b.label} names zone {b.zone!r}, which is not in "
                     "[presence.zones]" for b in beacons.beacons
                     if b.zone is not None and b.zone not in zones)
    campaigns = tuple(load_campaigns(config.offers.campaigns_file)) \
        if config.offers.campaigns_file is not None else ()
    return StartFiles(registry, beacons, pos, warnings, campaigns)


def check_tls(tls: TlsConfig) -> None:
    """Load the TLS files as the MQTT client will: they exist, parse and match."""
    ctx = ssl.create_default_context()
    if tls.ca_file is not None:
        _load(tls.ca_file, "CA bundle", lambda: ctx.load_verify_locations(cafile=tls.ca_file))
    if tls.cert_file is not None and tls.key_file is not None:
        cert, key = tls.cert_file, tls.key_file
        _load(cert, "client certificate and key",
              lambda: ctx.load_cert_chain(certfile=cert, keyfile=key))


def check_server_tls(cert: Path, key: Path) -> None:
    """Load the HTTP server's certificate and key as uvicorn will (which, at run, would
    only log and retry: the HTTP surface never stops the gateway, so a bad file would
    go unnoticed until someone opened a screen)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load(cert, "HTTP certificate and key",
          lambda: ctx.load_cert_chain(certfile=cert, keyfile=key))


def _load(path: Path, what: str, load: Callable[[], None]) -> None:
    try:
        load()
    except FileNotFoundError as exc:
        raise DataFileError(str(exc.filename or path), f"{what}: file not found") from exc
    except ssl.SSLError as exc:
        raise DataFileError(str(path), f"{what} not usable: {exc.reason or exc}") from exc
    except OSError as exc:
        raise DataFileError(str(exc.filename or path),
                            f"{what}: cannot read: {exc.strerror or exc}") from exc
