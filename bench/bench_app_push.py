"""Benchmark: offer decision → delivered on the customer's Server-Sent Events stream.

In process, everything real but the network: the personalisation service's hook
(``AppChannel.on_offer`` with a real ``Decision`` and a signed token) → the writer's
queue → the app inbox on disk (SQLite WAL, synchronous FULL: an fsync per batch, in a
worker thread) → the hub → the ``/app/events`` route of the real ASGI app (security
middleware, token check, StreamingResponse), driven by calling the app with an ASGI
``send`` that timestamps each body chunk. Latency = the chunk carrying the offer's id
reaching ``send``, minus the moment ``on_offer`` was called, on ``time.perf_counter``.

Two loads: ``paced`` (one offer every ``--gap-ms``, the realistic case: offers follow
people walking in) and ``burst`` (all at once: the writer's group commit at work).

    .venv/bin/python bench/bench_app_push.py [--offers 300] [--clients 50] [--gap-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from storegate.adapters.app_inbox import AppInbox  # noqa: E402
from storegate.app.app_channel import AppChannel  # noqa: E402
from storegate.app.http.hub import Hub  # noqa: E402
from storegate.app.http.server import build_app  # noqa: E402
from storegate.app.redemption import IssuedToken  # noqa: E402
from storegate.config import Config  # noqa: E402
from storegate.core.personal.campaigns import Campaign  # noqa: E402
from storegate.core.personal.offers import Decision  # noqa: E402
from storegate.core.personal.registry import Registry  # noqa: E402
from storegate.core.personal.tokens import TokenSigner  # noqa: E402
from storegate.core.webauth import b64url_encode, sign_app_token  # noqa: E402

AUDIENCE = "bench-app"
CAMPAIGN = Campaign.model_validate({
    "id": "welcome", "version": 1, "trigger": {"kind": "store_entered"},
    "content": {"title": "Welcome back", "text": "10 % off fresh bread today",
                "discount": {"kind": "percent", "value": 10}}})


class Gateway:
    def __init__(self, config: Config, channel: AppChannel) -> None:
        self.config = config
        self.app_channel = channel

    def status(self) -> Any:
        raise NotImplementedError


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(offers: int, clients: int, gap_s: float, root: Path, mode: str) -> list[float]:
    app_key = Ed25519PrivateKey.generate()
    config = Config.model_validate({
        "store_id": "s1", "gateway_id": "g1", "storage": {"path": str(root / "outbox.db")},
        "http": {"enabled": True, "app_audience": AUDIENCE, "app_token_keys": [{
            "kid": "k1", "public_key": b64url_encode(
                app_key.public_key().public_bytes_raw())}]}})
    inbox = AppInbox(root / f"{mode}.inbox.db")
    hub = Hub()
    channel = AppChannel(inbox, hub, Registry(tomb_key=b"k" * 32, keep_s=60),
                         tz=ZoneInfo("UTC"), wall_clock=time.time)
    app = build_app(Gateway(config, channel), config.http, time.time)  # type: ignore[arg-type]
    signer = TokenSigner(Ed25519PrivateKey.generate(), "s1")
    customers = [f"cust-{n:04d}" for n in range(clients)]
    decided: dict[str, float] = {}
    delivered: dict[str, float] = {}
    gone = asyncio.Event()

    async def phone(customer: str) -> None:
        token = sign_app_token(app_key, kid="k1", subject=customer, audience=AUDIENCE,
                               issued_at=time.time(), lifetime_s=3600)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/app/events",
                 "raw_path": b"/app/events", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"),
                             (b"authorization", f"Bearer {token}".encode())],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                at = time.perf_counter()
                text = message.get("body", b"").decode()
                for part in text.split('"offer_id":"')[1:]:
                    delivered.setdefault(part[:32], at)

        await app(scope, receive, send)

    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(channel.run(stop))
        for c in customers:
            tg.create_task(phone(c))
        while hub.subscribers() < clients:
            await asyncio.sleep(0.01)
        for n in range(offers):
            customer = customers[n % clients]
            now = time.time()
            token_id = os.urandom(16)
            text = signer.sign(token_id=token_id, offer="welcome", customer=customer,
                               issued_at=int(now), expires_at=int(now) + 3600)
            decision = Decision(outcome="issued", customer=customer,
                                trigger="store_entered", zone=None, visit_id=None,
                                decided_at=now, campaign=CAMPAIGN, expires_at=now + 3600)
            decided[token_id.hex()] = time.perf_counter()
            channel.on_offer(decision, IssuedToken(token_id.hex(), text, int(now) + 3600))
            if mode == "paced":
                await asyncio.sleep(gap_s)
        deadline = time.monotonic() + 30
        while len(delivered) < offers and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        hub.close_all()
        gone.set()
    inbox.close()
    missing = offers - len(delivered)
    if missing:
        print(f"  {mode}: {missing} offer(s) not delivered")
    return [(delivered[k] - decided[k]) * 1000 for k in decided if k in delivered]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--offers", type=int, default=300)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--gap-ms", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        for mode in ("paced", "burst"):
            ms = asyncio.run(run(args.offers, args.clients, args.gap_ms / 1000, Path(tmp),
                                 mode))
            print(f"{mode:6s} {len(ms)} offers, {args.clients} SSE clients: "
                  f"p50 {statistics.median(ms):.2f} ms, p99 {pct(ms, 0.99):.2f} ms, "
                  f"max {max(ms):.2f} ms")


if __name__ == "__main__":
    main()
