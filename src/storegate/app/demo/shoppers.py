"""The customers' side of the demo, through public surfaces only: the reference app
(its demo tokens on loopback, ``GET /app/offers``) hands the tills the QR text of offers
the gateway issued, and the store's order desk marks a click-and-collect order
collected through central's API (``POST /pickups/{order}/collected``): central sends the
store the customer's record, a version on, and the gateway's answer to that command is
what the demo counts as a pickup.

Runs in a worker thread of its own (blocking HTTP and a sleep between rounds); it only
reads the tally and writes to the token box and the broker.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from storegate.app.demo.broker import DemoError
from storegate.app.demo.tally import Tally
from storegate.app.demo.tills import TokenBox
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

ROUND_S = 1.0
HTTP_TIMEOUT_S = 5.0
COLLECT_AFTER_S = 20.0  # a shopper with an order ready walks to the desk, then collects
CENTRAL_KID = "demo-central"
_USER = re.compile(r'href="/app#token=([A-Za-z0-9._~-]+)">(cust-[A-Za-z0-9_-]+)<')

CentralApi = Callable[[str, str], Mapping[str, Any]]  # (method, path) -> central's answer


@dataclass(slots=True)
class ShopperCounts:
    offers_to_tills: int = 0
    pickups_sent: int = 0
    http_errors: int = 0
    last_error: str | None = None
    collected: list[str] = field(default_factory=list)  # order ids


class Shoppers:
    def __init__(self, *, http_base: str, store: str, tally: Tally, tokens: TokenBox,
                 central: CentralApi | None, ready: Mapping[str, str],
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``central``: a call to central's API (None without central: no pickups);
        ``ready``: customer -> the order central made ready for them."""
        self._base = http_base.rstrip("/")
        self._store = store
        self._tally = tally
        self._tokens = tokens
        self._central = central
        self._ready = dict(ready)
        self._wall = wall_clock
        self._warn = LogOnce(log)
        # state owned by the worker thread
        self._app_tokens: dict[str, str] = {}  # customer -> demo app token
        self._issued_seen = 0
        self._entered_seen = 0
        self._handed: set[str] = set()  # offer ids given to a till
        self._due: list[tuple[float, str]] = []  # (collect at, customer)
        self._collected: set[str] = set()
        # observable state
        self.counts = ShopperCounts()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo shoppers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(HTTP_TIMEOUT_S * 2)

    def _run(self) -> None:
        while not self._stop.wait(ROUND_S):
            try:
                self._offers_to_tills()
                self._pickups()
            except (OSError, ValueError, DemoError) as exc:  # restarting, a bad answer
                self.counts.http_errors += 1
                self.counts.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._warn(type(exc).__name__, "demo shoppers: %s (trying again)",
                           self.counts.last_error)

    # --- offers: from the customer's app to the till ---------------------------------

    def _offers_to_tills(self) -> None:
        fresh = self._tally.issued_since(self._issued_seen)
        self._issued_seen += len(fresh)
        customers = {customer for customer, _ in fresh}
        for customer in sorted(customers):
            token = self._app_token(customer)
            if token is None:
                continue
            offers = self._get_json("/app/offers", token).get("offers")
            for offer in offers if isinstance(offers, list) else []:
                if not isinstance(offer, dict):
                    continue
                oid = str(offer.get("offer_id"))
                if offer.get("state") == "issued" and oid not in self._handed:
                    self._handed.add(oid)
                    self._tokens.put(str(offer["token"]))
                    self.counts.offers_to_tills += 1

    def _app_token(self, customer: str) -> str | None:
        """The demo app token of a customer, from the app's demo page (loopback)."""
        if customer not in self._app_tokens:
            page = self._get("/app/demo").decode("utf-8", "replace")
            self._app_tokens.update({c: t for t, c in _USER.findall(page)})
        return self._app_tokens.get(customer)

    def _get(self, path: str, bearer: str | None = None) -> bytes:
        req = urllib.request.Request(self._base + path)  # noqa: S310 - our own loopback URL
        if bearer is not None:
            req.add_header("Authorization", f"Bearer {bearer}")
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:  # noqa: S310
            body: bytes = resp.read()
            return body

    def _get_json(self, path: str, bearer: str) -> dict[str, object]:
        try:
            data = json.loads(self._get(path, bearer))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # none for this customer (expired, erased)
                return {}
            raise
        return data if isinstance(data, dict) else {}

    # --- pickups: the order desk hands the order over ---------------------------------

    def _pickups(self) -> None:
        now = self._wall()
        fresh = self._tally.entered_since(self._entered_seen)
        self._entered_seen += len(fresh)
        for customer in fresh:
            if customer not in self._collected and customer in self._ready:
                self._due.append((now + COLLECT_AFTER_S, customer))
        due = [c for at, c in self._due if at <= now]
        self._due = [(at, c) for at, c in self._due if at > now]
        for customer in due:
            if customer not in self._collected:
                self._collect(customer, now)

    def _collect(self, customer: str, now: float) -> None:
        """The order desk scans the order out: central records it collected and sends
        the store the customer's record, a version on, without the order."""
        if self._central is None:
            return
        order = self._ready[customer]
        out = self._central("POST", f"/pickups/{order}/collected")
        self._collected.add(customer)
        command_id = out.get("command_id")
        if isinstance(command_id, str):
            self._tally.pickup_sent(command_id)
        self.counts.pickups_sent += 1
        self.counts.collected.append(order)
        log.info("order desk: %s collected %s (central command %s, at %.0f)", customer,
                 order, command_id, now)
