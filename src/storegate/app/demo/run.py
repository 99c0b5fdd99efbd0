"""``storegate demo``: the store in a box. Starts, in this order, a broker, central, the
demo's tills (their ptys), the gateway on the embedded demo store, the customers' side
(offers from the app to the tills, the order desk); shows a live view or, headless,
prints one JSON line of counts at the end.

Stops in the reverse order of what depends on what: the producers (tills, customers'
side) first, then the gateway drains its outbox and publishes its clean death
certificate, then central (it has read everything the broker had), then the broker.
Every child runs in its own session: Ctrl-C reaches only this process, which decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storegate.adapters import status_file
from storegate.adapters.outbox import OutboxReader
from storegate.adapters.plumbing import sleep_until_stopped
from storegate.app.demo import central as demo_central
from storegate.app.demo.broker import DemoBroker, DemoError, free_port, port_free
from storegate.app.demo.children import Child, stop_leftovers
from storegate.app.demo.shoppers import CENTRAL_KID, Shoppers
from storegate.app.demo.tally import Tally, TallyCounts
from storegate.app.demo.tills import DemoTill, TokenBox
from storegate.config import Config, demo_text, load
from storegate.core.topics import Topics
from storegate.core.trust import public_key_text
from storegate.log_once import LogOnce
from storegate.sim.store import build

log = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8080
RUN_MARKER = ".storegate-demo"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GATEWAY_START_TIMEOUT_S = 60.0
STATUS_POLL_S = 1.0
STATUS_SETTLE_S = 5.0  # for the retained death certificate to reach the demo's subscriber
# A lane's receipt still printing, then the drain, then closing the stores.
GATEWAY_STOP_MARGIN_S = 20.0
# A customer rung up at a till takes up to ~12 s (8 items, then the receipt).
TILL_FINISH_S = 20.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    state_dir: Path
    headless: bool = False
    duration_s: float | None = None
    mqtt_port: int | None = None
    http_port: int | None = None
    every_s: float = 8.0  # a customer at each till this often
    central: bool = True


@dataclass(slots=True)
class GatewayFigures:
    """From the running gateway's status file (None until it writes one)."""

    running: bool = False
    connected: bool = False
    depth: int = 0
    published_total: int = 0
    last_sequence: int = 0
    state: str = "starting"


@dataclass(slots=True)
class Snapshot:
    """Everything the view shows, at one moment."""

    phase: str
    started_at: float
    now: float
    broker_port: int
    broker_running: bool
    broker_stopped: bool  # by the demo, at the end
    http_base: str
    tally: TallyCounts
    gateway: GatewayFigures
    central: demo_central.CentralFigures
    lanes: dict[str, int]  # lane -> customers rung up
    tokens_waiting: int
    tokens_scanned: int
    pickups_sent: int
    zones: list[str]
    log_path: Path
    shutdown: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The headless JSON line (and the test's figures)."""

    visits: int
    purchases: int
    purchases_by_lane: dict[str, int]
    offers_issued: int
    offers_suppressed: int
    redemptions: int
    pickups: int
    events_acked: int
    events_stored_central: int | None
    events_seen: int
    drained: bool
    last_status: str | None
    outbox_depth: int
    duration_s: float

    def json_line(self) -> str:
        return json.dumps({
            "visits": self.visits, "purchases": self.purchases,
            "purchases_by_lane": dict(sorted(self.purchases_by_lane.items())),
            "offers_issued": self.offers_issued,
            "offers_suppressed": self.offers_suppressed,
            "redemptions": self.redemptions, "pickups": self.pickups,
            "events_acked": self.events_acked,
            "events_stored_central": self.events_stored_central,
            "events_seen": self.events_seen, "drained": self.drained,
            "last_status": self.last_status, "outbox_depth": self.outbox_depth,
            "duration_s": round(self.duration_s, 1)}, separators=(",", ":"))


class Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.run_dir = options.state_dir
        self.phase = "starting"
        self.started_at = time.time()
        self.shutdown_steps: list[str] = []
        self._central_key = Ed25519PrivateKey.generate()
        self.broker: DemoBroker | None = None
        self.tally: Tally | None = None
        self.central: demo_central.DemoCentral | None = None
        self.gateway: Child | None = None
        self.tills: list[DemoTill] = []
        self.tokens = TokenBox()
        self.shoppers: Shoppers | None = None
        self.config: Config | None = None
        self.http_port = 0
        self._gw = GatewayFigures()
        self.result: DemoResult | None = None

    # --- start -------------------------------------------------------------------------

    def prepare(self) -> Config:
        """A fresh run directory (the demo's own: broker, outbox, central), the demo
        store's config with the order desk's key trusted, the ports chosen."""
        self._fresh_run_dir()
        text = demo_text() + (
            "\n# Written by `storegate demo`: the key its central signs commands with.\n"
            f'[trust]\ncentral_keys = [{{ kid = "{CENTRAL_KID}", public_key = '
            f'"{public_key_text(self._central_key.public_key())}" }}]\n')
        path = self.run_dir / "store.toml"
        path.write_text(text, "utf-8")
        port = self.options.http_port
        if port is None:
            port = DEFAULT_HTTP_PORT if port_free(DEFAULT_HTTP_PORT) else free_port()
        elif not port_free(port):
            raise DemoError(f"HTTP port {port} is taken: choose another with --http-port")
        self.http_port = port
        self.broker = DemoBroker(self.run_dir / "broker", self.options.mqtt_port)
        self._env = {**{k: v for k, v in os.environ.items()
                        if not k.startswith("STOREGATE_")},
                     "STOREGATE_MQTT__PORT": str(self.broker.port),
                     "STOREGATE_HTTP__PORT": str(port),
                     # the demo's own tills drive the lanes (it decides when they stop)
                     "STOREGATE_SOURCES__LANE_SIMULATOR__ENABLED": "false",
                     "STOREGATE_PRESENCE__OCCUPANCY_INTERVAL_S": "10",
                     "STOREGATE_SOURCES__TELEMETRY__INTERVAL_S": "5"}
        if self.options.central and demo_central.unavailable_reason() is None:
            # as in production: the app users' records (consents with proof, pickup
            # orders) reach the box from central, which the demo enrols them in
            self._env["STOREGATE_SOURCES__SIMULATOR__REGISTRY_FROM_CENTRAL"] = "true"
        self.config = load(path, environ=self._env)
        self._config_path = path
        return self.config

    def _fresh_run_dir(self) -> None:
        """Empty the demo's directory; only one the demo made (its marker file) or an
        empty one: ``--state-dir ~`` must never delete a home."""
        d = self.run_dir
        if d.is_symlink():  # emptied at start: the link's target would be, or fail half-way
            raise DemoError(f"--state-dir {d} is a symbolic link: give the folder itself "
                            f"({d.resolve()})")
        if d.exists() and not d.is_dir():
            raise DemoError(f"--state-dir {d} is a file, not a folder: choose another")
        if d.exists() and any(d.iterdir()):
            if not (d / RUN_MARKER).exists():
                raise DemoError(f"{d} is not empty and not a storegate demo directory: "
                                "choose another --state-dir")
            left = stop_leftovers(d, ("gateway", "central", "mosquitto"),
                                  GATEWAY_STOP_MARGIN_S)
            if left:
                log.warning("stopped what an earlier demo left running: %s",
                            ", ".join(left))
            shutil.rmtree(d)
        d.mkdir(parents=True, mode=0o700, exist_ok=True)
        (d / RUN_MARKER).write_text("made by `storegate demo`; emptied at its next start\n")

    def start(self) -> None:
        config = self.config or self.prepare()
        assert self.broker is not None
        self.phase = "starting the broker"
        self.broker.start()
        topics = Topics(config.store_id, config.gateway_id)
        self.tally = Tally(self.broker.port, topics)
        self.tally.start()
        if not self.tally.wait_connected(10):
            raise DemoError(f"cannot subscribe to the demo broker on {self.broker.port}")
        if self.options.central:
            self.phase = "starting central"
            self.central = demo_central.start(
                self.run_dir / "central", self.broker.port, config.store_id,
                config.gateway_id, key=self._central_key, kid=CENTRAL_KID, env=self._env)
        ready: list[tuple[str, str]] = []
        if self.central is not None:
            self.phase = "enrolling the app users in central"
            sim = config.sources.simulator
            users = [i.customer for i in build(sim.seed, app_users=sim.app_users,
                                               other_devices=0, passers_by=0,
                                               duration_s=sim.hour_s).identities()]
            ready = self.central.enrol(users, config.store_id, time.time())
        self.phase = "plugging in the tills"
        for n, lane in enumerate(config.pos.lanes):
            till = DemoTill(lane, every_s=self.options.every_s, seed=100 + n,
                            tokens=self.tokens)
            till.open()
            self.tills.append(till)
        self.phase = "starting the gateway"
        self.gateway = Child("gateway", [sys.executable, "-m", "storegate", "--log-format",
                                         "json", "run", "-c", str(self._config_path)],
                             log_path=self.run_dir / "gateway.log", env=self._env)
        self.gateway.start()
        self._wait_gateway(config)
        self.shoppers = Shoppers(http_base=self.http_base, store=config.store_id,
                                 tally=self.tally, tokens=self.tokens,
                                 central=self.central.api if self.central else None,
                                 ready=dict(ready))
        self.shoppers.start()
        self.phase = "running"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _wait_gateway(self, config: Config) -> None:
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT_S
        assert self.gateway is not None
        while True:
            self.poll_gateway(config)
            if self._gw.running and self._gw.connected:
                return
            if not self.gateway.running:
                raise DemoError("the gateway exited at start:\n" + self.gateway.tail())
            if time.monotonic() > deadline:
                raise DemoError(f"the gateway did not connect within "
                                f"{GATEWAY_START_TIMEOUT_S:g} s:\n" + self.gateway.tail())
            time.sleep(0.2)

    def poll_gateway(self, config: Config) -> GatewayFigures:
        live = status_file.read(config.status_path)
        if live:
            broker = live.get("broker") or {}
            outbox = live.get("outbox") or {}
            self._gw = GatewayFigures(
                running=live.get("state") == "running", connected=bool(broker.get("connected")),
                depth=int(outbox.get("depth", 0)),
                published_total=int(broker.get("published_total", 0)),
                last_sequence=int(outbox.get("last_sequence", 0)),
                state=str(live.get("state")))
        return self._gw

    # --- run ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event,
                  on_tick: Callable[[Snapshot], None] | None = None) -> DemoResult:
        """Start everything, run until ``stop`` (or the duration), stop everything in
        order. ``on_tick`` gets a snapshot every second (the view)."""
        ticker = asyncio.create_task(self._ticker(on_tick))  # the view shows the start too
        try:
            await asyncio.to_thread(self.start)
        except BaseException:
            ticker.cancel()
            raise
        till_stop = asyncio.Event()
        tasks = [asyncio.create_task(t.run(till_stop), name=f"till {t.lane}")
                 for t in self.tills]
        try:
            if self.options.duration_s is not None:
                await sleep_until_stopped(stop, self.options.duration_s)
            else:
                await stop.wait()
        finally:
            self._step("producers: the tills finish their customer, the customers' side stops")
            till_stop.set()
            _, pending = await asyncio.wait(tasks, timeout=TILL_FINISH_S) if tasks \
                else (set(), set())
            for task in pending:
                task.cancel()
            if self.shoppers is not None:
                await asyncio.to_thread(self.shoppers.stop)
            await asyncio.to_thread(self._stop_rest)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if on_tick is not None:
                on_tick(self.snapshot())
        assert self.result is not None
        return self.result

    async def _ticker(self, on_tick: Callable[[Snapshot], None] | None) -> None:
        """The figures, once a second; a failing poll or view costs one tick, logged
        once per kind of failure, never the run (the shutdown must still happen)."""
        warn = LogOnce(log)
        while True:
            try:
                if self.config is not None and self.gateway is not None \
                        and self.gateway.running:
                    await asyncio.to_thread(self.poll_gateway, self.config)
                if self.central is not None:
                    await asyncio.to_thread(self.central.poll)
                if on_tick is not None:
                    on_tick(self.snapshot())
            except Exception as exc:
                warn(type(exc).__name__, "demo view: a tick failed (%s: %s)",
                     type(exc).__name__, exc)
            await asyncio.sleep(STATUS_POLL_S)

    def _step(self, text: str) -> None:
        self.phase = "stopping"
        self.shutdown_steps.append(text)
        log.info("demo stopping: %s", text)

    def _stop_rest(self) -> None:
        """The gateway drains, then central, then the broker; the figures at the end."""
        config = self.config
        assert config is not None
        if self.gateway is not None:
            self._step("gateway: stops its sources, drains the outbox, says offline")
            code = self.gateway.stop(config.storage.shutdown_drain_s + GATEWAY_STOP_MARGIN_S)
            self._step(f"gateway stopped (exit {code})")
        for till in self.tills:  # unplugged once nobody reads them
            till.close()
        acked, depth, drained = self._outbox_figures(config)
        self._gw = GatewayFigures(
            running=False, connected=False, depth=depth, published_total=acked,
            last_sequence=self._gw.last_sequence,
            state="stopped, drained" if drained else f"stopped, {depth} left in the outbox")
        self._settle_status()
        stored = None
        if self.central is not None:
            self._step("central: reads what the broker still holds for it, stops")
            stored = self.central.stop(expect=acked)
            self._step(f"central stopped ({stored} event(s) stored)")
        counts = self.tally.counts() if self.tally is not None else TallyCounts()
        if self.tally is not None:
            self.tally.stop()
        if self.broker is not None:
            self._step("broker: stops last")
            self.broker.stop()
        status = counts.status
        self.result = DemoResult(
            visits=counts.store_visits,
            purchases=sum(counts.purchases_by_lane.values()),
            purchases_by_lane=dict(counts.purchases_by_lane),
            offers_issued=counts.by_type["storegate.offer.issued.v1"],
            offers_suppressed=counts.by_type["storegate.offer.suppressed.v1"],
            redemptions=counts.by_type["storegate.offer.redeemed.v1"],
            pickups=counts.pickups_collected,
            events_acked=acked, events_stored_central=stored, events_seen=counts.events,
            drained=drained, outbox_depth=depth,
            last_status=None if status is None else f"{status.state}/{status.reason}",
            duration_s=time.time() - self.started_at)
        self.phase = "stopped"

    def _outbox_figures(self, config: Config) -> tuple[int, int, bool]:
        """Events the broker acknowledged this run (a fresh outbox: every sequence
        number accepted, less what is still pending or was dropped), what is left."""
        try:
            with OutboxReader(config.storage.path) as reader:
                st = reader.stats()
        except Exception as exc:  # no outbox: the gateway never started
            log.warning("outbox not readable after the run: %s", exc)
            return 0, 0, False
        acked = st.last_sequence - st.depth - st.dropped_total
        return acked, st.depth, st.depth == 0

    def _settle_status(self) -> None:
        """The gateway published its death certificate before exiting; give it the
        moment it takes to reach the demo's subscriber."""
        deadline = time.monotonic() + STATUS_SETTLE_S
        while self.tally is not None and time.monotonic() < deadline:
            status = self.tally.counts().status
            if status is not None and status.state == "offline":
                return
            time.sleep(0.05)

    def abort(self) -> None:
        """After a failed start: stop whatever was started, in the same order."""
        if self.shoppers is not None:
            self.shoppers.stop()
        if self.gateway is not None:
            self.gateway.stop(GATEWAY_STOP_MARGIN_S)
        for till in self.tills:
            till.close()
        if self.central is not None:
            self.central.stop(expect=None)
        if self.tally is not None:
            self.tally.stop()
        if self.broker is not None:
            self.broker.stop()

    # --- the view's data --------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        config = self.config
        return Snapshot(
            phase=self.phase, started_at=self.started_at, now=time.time(),
            broker_port=self.broker.port if self.broker else 0,
            broker_running=bool(self.broker and self.broker.running),
            broker_stopped=self.phase == "stopped",
            http_base=self.http_base,
            tally=self.tally.counts() if self.tally else TallyCounts(),
            gateway=self._gw,
            central=self.central.figures() if self.central else
            demo_central.CentralFigures.absent(self.options.central),
            lanes={t.lane: t.receipts for t in self.tills},
            tokens_waiting=len(self.tokens), tokens_scanned=self.tokens.scanned_total,
            pickups_sent=self.shoppers.counts.pickups_sent if self.shoppers else 0,
            zones=[z.id for z in config.presence.zones] if config else [],
            log_path=self.run_dir / "demo.log",
            shutdown=list(self.shutdown_steps))


def default_state_dir() -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "storegate" / "demo-box"


def run_demo(demo: Demo, on_tick: Callable[[Snapshot], None] | None = None) -> DemoResult:
    """Run a prepared demo until Ctrl-C/SIGTERM (or its duration); the children are
    stopped in order, also when the start fails half way."""

    async def main() -> DemoResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGHUP too: a closed terminal must not leave the children (own sessions) running
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        try:
            return await demo.run(stop, on_tick)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except BaseException:
        if demo.result is None:
            demo.abort()
        raise


def result_dict(result: DemoResult) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.json_line())
    return data
