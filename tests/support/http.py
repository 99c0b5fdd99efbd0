"""The HTTP surface in tests: settings with known credentials, a gateway stand-in that
answers ``status()`` with the real typed model, tokens and an in-process client."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from storegate.adapters.mqtt_paho import PublisherStatus
from storegate.app.http.server import build_app
from storegate.app.sim_store import SimSourceStatus
from storegate.app.status import (
    CommandsStatus,
    GatewayStatusView,
    LaneStatus,
    OutboxStatus,
    PendingAcceptStatus,
    PersonalStatus,
    PosDeviceStatus,
    PosStatus,
    PresenceCounters,
    PresenceStatus,
)
from storegate.config import Config, HttpConfig
from storegate.core.webauth import b64url_encode, hash_secret, sign_app_token

NOW = 1_795_000_000.0
ADMIN_TOKEN = "admin-token-0123456789-abcdef"
METRICS_TOKEN = "metrics-token-0123456789-abcdef"
DEVICE_TOKEN = "device-token-lane-2-0123456789"
CASHIER_PIN = "1234"
MANAGER_PIN = "9999"
AUDIENCE = "storegate-test-app"
APP_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
APP_KID = "central-app-1"
# scrypt is slow by design: hash the test PINs once, with the cheapest allowed cost
_PIN_HASHES: dict[str, str] = {}


def pin_hash(pin: str) -> str:
    if pin not in _PIN_HASHES:
        _PIN_HASHES[pin] = hash_secret(pin, salt=os.urandom(16), kind="pbkdf2-sha256")
    return _PIN_HASHES[pin]


def public_key_text(key: Ed25519PrivateKey) -> str:
    return b64url_encode(key.public_key().public_bytes_raw())


def app_http_toml(port: int) -> str:
    """The ``[http]`` table of a live gateway's config (loopback, ``port``) whose app
    channel trusts the test's app key; a caller appends its own keys of that table."""
    return (f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
            f'app_audience = "{AUDIENCE}"\n'
            f'app_token_keys = [{{ kid = "{APP_KID}", public_key = '
            f'"{public_key_text(APP_KEY)}" }}]')


def http_settings(**overrides: Any) -> HttpConfig:
    data: dict[str, Any] = {
        "enabled": True,
        "admin_token_hashes": [hash_secret(ADMIN_TOKEN, salt=b"", kind="sha256")],
        "metrics_token_hash": hash_secret(METRICS_TOKEN, salt=b"", kind="sha256"),
        "staff": [
            {"lane": "lane-1", "role": "cashier", "name": "till-1",
             "pin_hash": pin_hash(CASHIER_PIN)},
            {"lane": "lane-2", "role": "cashier", "name": "till-2",
             "device_token_hash": hash_secret(DEVICE_TOKEN, salt=b"", kind="sha256")},
            {"lane": "*", "role": "manager", "name": "manager", "pin_hash": pin_hash(MANAGER_PIN)},
            {"lane": "floor", "role": "floor", "name": "floor-1",
             "pin_hash": pin_hash("5555")},
        ],
        "app_token_keys": [{"kid": APP_KID, "public_key": public_key_text(APP_KEY)}],
        "app_audience": AUDIENCE,
        "session_ttl_s": 3600,
    }
    data.update(overrides)
    return HttpConfig.model_validate(data)


def customer_token(subject: str = "cust-0001", *, key: Ed25519PrivateKey = APP_KEY,
                   kid: str = APP_KID, audience: str = AUDIENCE, issued_at: float = NOW,
                   lifetime_s: float = 3600) -> str:
    return sign_app_token(key, kid=kid, subject=subject, audience=audience,
                          issued_at=issued_at, lifetime_s=lifetime_s)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def healthy_status(**overrides: Any) -> GatewayStatusView:
    """A running gateway's status, every part present and well (real typed model)."""
    status = GatewayStatusView(
        pid=1, state="running", store_id="s1", gateway_id="g1", version="0.1.0", session=3,
        started_at=NOW - 100, updated_at=NOW,
        broker=PublisherStatus(
            url="mqtt://127.0.0.1:1883", connected=True, since=NOW - 90, last_error=None,
            in_flight=2, published_total=120, rejected_total=1, refused_held=0,
            last_refusal=None, warnings=(), birth_check=None, reconnects_total=1,
            connect_failures=0),
        outbox=OutboxStatus(
            path="/tmp/outbox.db", accepted_total=130, failed_total=0, last_error=None,
            depth=7, last_sequence=130,
            pending_accept=PendingAcceptStatus(pending=0, pending_purchases=0, held_total=0,
                                               dropped={}, accepted_after_hold_total=0)),
        seal_key="seal",
        commands=CommandsStatus(accepted_total=4, rejected_total=3,
                                rejected_by_reason={"bad_signature": 2, "stale": 1},
                                last_rejection="bad_signature", central_keys=("c1",)),
        presence=PresenceStatus(
            enrolled=30, tracked=55, present={"store": 12, "dairy": 3, "checkout": 2},
            counters=PresenceCounters(adverts=5000, resolved=900, unresolved_eid=10,
                                      anonymous=4000, infrastructure={"ibeacon": 90},
                                      unknown_scanner=0),
            beacons_last_heard={}, commands_applied=2, errors_total=0,
            sources=(SimSourceStatus(state="running", runs=1, adverts_total=5000),)),
        pos=PosStatus(lanes={"lane-1": LaneStatus(
            counters={"receipts": 9, "purchases": 8, "totals_mismatch": 1},
            devices=(PosDeviceStatus(role="printer", dialect="escpos", port="/dev/ttyUSB0",
                                     frames_total=400, rejected={"bad_checksum": 2},
                                     tap=None),))}, errors_total=0),
        personal=PersonalStatus(
            customers_known=30, campaigns_active=6, offers_issued_total=11,
            offers_suppressed_by_reason={"min_gap": 4, "quiet_hours": 1},
            tokens_reserved_total=3, tokens_redeemed_total=2, tokens_released_total=1,
            tokens_rejected_by_reason={"expired": 1}, stitched_by_method={"loyalty": 5},
            ledger_errors_total=0),
    )
    return replace(status, **overrides)


@dataclass
class StatusGateway:
    """A gateway stand-in: a real Config and a real typed status, set by the test."""

    config: Config
    current: GatewayStatusView = field(default_factory=healthy_status)
    personal: object | None = None
    config_loader: Callable[[], Config] | None = None  # the config reload's source

    def status(self) -> GatewayStatusView:
        return self.current


def make_config(tmp_path: Path, http: HttpConfig | None = None) -> Config:
    return Config.model_validate({"store_id": "s1", "gateway_id": "g1",
                                  "storage": {"path": str(tmp_path / "outbox.db")},
                                  "http": (http or http_settings()).model_dump()})


def make_client(tmp_path: Path, *, settings: HttpConfig | None = None,
                clock: Callable[[], float] | None = None,
                gateway: StatusGateway | None = None, **build: Any,
                ) -> tuple[TestClient, FastAPI, StatusGateway]:
    settings = settings or http_settings()
    gw = gateway or StatusGateway(make_config(tmp_path, settings))
    app = build_app(gw, settings, clock or Clock(), **build)
    # https: the session cookie is Secure, so the client sends it back only over https
    return TestClient(app, base_url="https://testserver"), app, gw


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
