"""Central in the demo, through its public entry only: the ``storegate central``
command (its own process and session, SQLite in the run directory, the demo broker)
and its retailer API (``GET /gateways``: events stored per gateway, open gaps).

It signs with the demo's central key (the gateway trusts it), so its gap scanner can
ask the gateway for a replay, and it is the source of the store's registry: the demo
enrols its app users there (consents with proof) and runs the click-and-collect orders
through its API (:meth:`DemoCentral.enrol`, :meth:`DemoCentral.api`). When this build
has no ``storegate central`` the demo runs without it and says so
(``events_stored_central: null``, never a made-up figure).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from storegate.app.demo.broker import DemoError, free_port, listening
from storegate.app.demo.children import Child
from storegate.app.sim_store import demo_record

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CATCH_UP_S = 15.0  # at the end, for central to store what the broker still holds for it
HTTP_TIMEOUT_S = 3.0
ENV_TOKENS = "STOREGATE_CENTRAL_TOKENS"  # storegate central's API tokens


@dataclass(frozen=True, slots=True)
class CentralFigures:
    running: bool
    note: str  # one line: what central is doing, or why it is not running
    stored: int | None = None  # events stored for the demo's gateway (by id: no duplicate)
    gaps_open: int | None = None

    @classmethod
    def absent(cls, wanted: bool) -> CentralFigures:
        if not wanted:
            return cls(False, "not running (--no-central)")
        return cls(False, f"not running: {unavailable_reason() or 'not started yet'}")


def unavailable_reason() -> str | None:
    """Why central cannot be part of this demo, or None if it can."""
    if importlib.util.find_spec("storegate.app.central.cli") is None:
        return "this build has no `storegate central`"
    return None


class DemoCentral:
    """A started ``storegate central``: polled for its ingest, stopped after the gateway."""

    def __init__(self, state: Path, broker_port: int, store: str, gateway: str, *,
                 key: Ed25519PrivateKey, kid: str, env: Mapping[str, str]) -> None:
        state.mkdir(parents=True, exist_ok=True)
        key_path = state / "central.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        self.port = free_port()
        self._token = secrets.token_urlsafe(24)
        self._store, self._gateway = store, gateway
        self._figures = CentralFigures(False, "starting")
        self.child = Child("central", [
            sys.executable, "-m", "storegate", "--log-format", "json", "central",
            "--storage", str(state / "central.db"), "--mqtt-port", str(broker_port),
            "--client-id", f"demo-central-{store}", "--key", str(key_path), "--kid", kid,
            "--http-port", str(self.port)],
            log_path=state / "central.log", env={**env, ENV_TOKENS: self._token})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.child.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(self.port):
            if not self.child.running:
                raise DemoError("central exited at start:\n" + self.child.tail())
            if time.monotonic() > deadline:
                self.child.stop(STOP_TIMEOUT_S)
                raise DemoError(f"central's API not up within {START_TIMEOUT_S:g} s:\n"
                                + self.child.tail())
            time.sleep(0.1)
        self.poll()

    def poll(self) -> None:
        """Central's own account of this gateway (its API); on failure the last one."""
        if not self.child.running:
            self._figures = CentralFigures(False, "stopped", self._figures.stored,
                                           self._figures.gaps_open)
            return
        req = urllib.request.Request(self.url + "/gateways")  # noqa: S310 - loopback
        req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
                rows = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            self._figures = CentralFigures(True, f"API not answering: {exc}"[:120],
                                           self._figures.stored, self._figures.gaps_open)
            return
        mine = next((r for r in rows if isinstance(r, dict) and r.get("store") == self._store
                     and r.get("gateway") == self._gateway), None)
        if mine is None:
            self._figures = CentralFigures(True, f"ingesting; nothing from {self._store}/"
                                           f"{self._gateway} yet ({self.url})", 0, 0)
            return
        gaps = len(mine.get("open_gaps") or [])
        self._figures = CentralFigures(
            True, f"ingesting ({self.url}): up to sequence {mine.get('highest')}, "
            f"status {mine.get('state')}", int(mine.get("events") or 0), gaps)

    def figures(self) -> CentralFigures:
        return self._figures

    def api(self, method: str, path: str, body: object | None = None) -> dict[str, Any]:
        """One call to central's retailer API (what the retailer's CRM and order system
        do); an HTTP error raises :class:`DemoError` with central's own detail."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,  # noqa: S310 - loopback
                                     method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
                out = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise DemoError(f"central {method} {path}: {exc.code} {detail}") from exc
        return out if isinstance(out, dict) else {"items": out}

    def enrol(self, customers: list[str], store: str, now: float) -> list[tuple[str, str]]:
        """The demo's app users as the retailer's CRM enrols them: consents with their
        proof (the app's privacy toggle), the CRM's profile fields; then the web shop's
        click-and-collect orders, created and made ready. Central sends the store all of
        it (the whole registry when the gateway first announces itself). Returns the
        orders made ready: (customer, order id)."""
        ready: list[tuple[str, str]] = []
        for customer in customers:
            record = demo_record(customer, now)
            proof = {"method": "app_toggle", "reference": f"demo-app/{customer}/privacy",
                     "text_version": "demo-1"}
            consent = {"granted": True, "at": now, "source": "app", "store": store,
                       "proof": proof}
            prof = record.profile
            self.api("PUT", f"/customers/{customer}", {
                "consents": {"presence": consent, "marketing": consent,
                             "staff_view": consent},
                "profile": {"greeting_name": prof.greeting_name, "tier": prof.tier,
                            "segments": list(prof.segments),
                            "preferences": list(prof.preferences),
                            "birthday_month": prof.birthday_month,
                            "store_visits": prof.store_visits}})
            for order in record.pickup_orders:
                self.api("POST", "/pickups", {"order_id": order.order_id,
                                              "customer": customer, "store": store,
                                              "items": order.items})
                self.api("POST", f"/pickups/{order.order_id}/ready")
                ready.append((customer, order.order_id))
        return ready

    def stop(self, expect: int | None) -> int | None:
        """Stop after central stored ``expect`` events of the gateway (what the broker
        acknowledged), or after :data:`CATCH_UP_S`; the count it reached."""
        deadline = time.monotonic() + CATCH_UP_S
        while expect is not None and self.child.running and time.monotonic() < deadline:
            self.poll()
            if (self._figures.stored or 0) >= expect and not self._figures.gaps_open:
                break
            time.sleep(0.2)
        if self.child.running:
            self.poll()
        stored = self._figures.stored
        self.child.stop(STOP_TIMEOUT_S)
        self._figures = CentralFigures(False, "stopped", stored, self._figures.gaps_open)
        return stored


def start(state: Path, broker_port: int, store: str, gateway: str, *,
          key: Ed25519PrivateKey, kid: str, env: Mapping[str, str]) -> DemoCentral | None:
    """Central on the demo's broker, or None (said in the log) when this build has none."""
    reason = unavailable_reason()
    if reason is not None:
        log.warning("central not started: %s", reason)
        return None
    central = DemoCentral(state, broker_port, store, gateway, key=key, kid=kid, env=env)
    central.start()
    return central
