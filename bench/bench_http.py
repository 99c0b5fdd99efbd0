"""Benchmark: the HTTP surface of a real `storegate run` under a store's worth of clients.

A real gateway process (its uvicorn in the gateway's own event loop, as in a store), a
real mosquitto, a pty lane (lane-1, checkout zone "checkout"), central's signed
commands enrolling ``--clients`` customers (presence, marketing and staff_view consent)
and one store_entered campaign. Connected to it the whole time:

* ``--clients`` customer apps on the WebSocket (``/app/ws``, each with its own token);
* ``--screens`` staff screens on Server-Sent Events, all on lane-1's till
  (``/lanes/lane-1/events``, a cashier session each): every change of that lane goes to
  all of them, the worst case for fan-out. ``--lanes N`` spreads them over N lanes
  (round robin; lane-k's checkout zone is its own), the realistic case: a check-in at
  lane-1's zone changes lane-1's screens only, and the till latency is theirs.

Measured:

1. offer decision → delivered to the app. Customer *i* checks in at the checkout
   zone's poster (``POST /app/checkin``): presence enters them, the campaign decides an
   offer, the app channel pushes it. Latency = arrival on the phone's WebSocket minus
   the decision time the message carries (``issued_at``, the gateway's wall clock at the
   decision; same machine). Sequential (``paced``), then a ``burst`` of check-ins at the
   entrance from the rest of the customers, ``--burst-concurrency`` at a time.
2. presence event → till screen update. The same check-in at the checkout zone (the
   screen shows customer *i*), then one at the entrance (they left the checkout zone:
   the screen clears). Latency = the frame on each of the screens minus the moment the
   check-in request was *sent*: an upper bound, it includes the HTTP request itself.
3. requests/s and p99 of ``/healthz`` and of the offers list (``GET /app/offers``,
   token verified, inbox read) with everything above still connected, next to a bare
   FastAPI endpoint (a separate process, same uvicorn settings as the gateway's:
   asyncio loop, httptools, no access log) in the same run: the ratio.
4. RSS of the whole gateway process: idle, then with all of that connected.

Arrivals are stamped as each WebSocket message or SSE chunk is read, and parsed only
when looked at: 50 screens get each till frame at once, and parsing every frame on
receipt stamped the later screens (and a phone behind them) late by the others'
parsing. The load generator is a separate process (a keep-alive HTTP/1.1 client on raw asyncio
streams, on uvloop when installed: httpx costs ~10x the CPU per request and would
measure itself); its CPU use and the server's are reported, so it is visible which
side was saturated. The WebSocket and SSE clients live in this process, idle during
the request runs. Targets (reported, not asserted): push p99 ≤ 50 ms, till update p99
≤ 200 ms, API ≥ 70 % of the bare endpoint.

    .venv/bin/python bench/bench_http.py [--clients 1000] [--screens 50] [--lanes 1]
                                         [--samples 200] [--duration 5] [--conns 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402

from tests.support.central import CENTRAL, customer_record, topic  # noqa: E402
from tests.support.gateway_proc import env, start_run, storegate, write_config  # noqa: E402
from tests.support.http import (  # noqa: E402
    CASHIER_PIN,
    app_http_toml,
    customer_token,
    pin_hash,
)
from tests.support.mosquitto import Mosquitto, free_port  # noqa: E402
from tests.support.pty_lane import PtyDevice  # noqa: E402
from tests.support.subscriber import Subscriber  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

RESULTS = REPO / "bench" / "results" / "http.json"
TIMEOUT_S = 30.0
CAMPAIGN = {"id": "welcome", "version": 1, "trigger": {"kind": "store_entered"},
            "priority": 50, "control_share": 0.0, "offer_ttl_s": 3600,
            "content": {"title": "Welcome back", "text": "10 % off fresh bread today",
                        "discount": {"kind": "percent", "value": 10}}}
TARGETS = {"push_p99_ms": 50.0, "till_p99_ms": 200.0, "api_ratio": 0.70}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 2), "p99_ms": round(pct(ms, 0.99), 2),
            "max_ms": round(max(ms), 2)}


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional: the client side's speed only
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_async(main: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


# --- the bare endpoint and the load generator (each its own process) -----------------


# A bare FastAPI endpoint with the gateway's uvicorn settings (app/http/server.py), run
# with `python -c` so the process imports only FastAPI and uvicorn (its RSS is theirs).
BARE_SERVER = """
import sys, uvicorn
from fastapi import Depends, FastAPI
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
app = FastAPI()

@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}

# FastAPI's own floor for a route shaped like the offers list: a bearer dependency, a
# response model of one offer, no token check and no database (a reference, not a
# target: the ratio to bare is against /healthz above)
class Offer(BaseModel):
    offer_id: str
    title: str
    token: str
    state: str
    expires_at: float

class Offers(BaseModel):
    offers: list[Offer]

@app.get("/app/offers", response_model=Offers)
async def offers(creds: HTTPAuthorizationCredentials = Depends(HTTPBearer())) -> Offers:
    return Offers(offers=[Offer(offer_id="0" * 32, title="Welcome back", token=creds.scheme,
                                state="issued", expires_at=1.0)])

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools",
            loop="asyncio", lifespan="off", access_log=False, log_level="warning",
            server_header=False)
"""


async def load(port: int, path: str, headers: list[str], conns: int, duration: float,
               warmup: float, server_pid: int) -> dict[str, Any]:
    """``conns`` keep-alive connections, each sending the next request as soon as the
    last answer is read, for warmup + duration seconds; only the last ``duration``
    count. The client's and the server's CPU are taken over that same window."""
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (sent := time.perf_counter()) < stop_at:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                at = head.lower().find(b"\r\ncontent-length:")
                if at < 0:
                    raise RuntimeError(f"{path}: no content-length in {head[:200]!r}")
                size = int(head[at + 17:head.index(b"\r\n", at + 2)])
                await reader.readexactly(size)
                if sent >= measure_from:
                    latencies.append(time.perf_counter() - sent)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    server = psutil.Process(server_pid)
    cpu: dict[str, float] = {}

    async def window() -> None:
        await asyncio.sleep(warmup)
        mine, theirs, at = resource.getrusage(resource.RUSAGE_SELF), server.cpu_times(), \
            time.perf_counter()
        await asyncio.sleep(duration)
        mine2, theirs2, wall = resource.getrusage(resource.RUSAGE_SELF), server.cpu_times(), \
            time.perf_counter() - at
        cpu["client"] = (mine2.ru_utime - mine.ru_utime + mine2.ru_stime - mine.ru_stime) / wall
        cpu["server"] = (theirs2.user - theirs.user + theirs2.system - theirs.system) / wall

    await asyncio.gather(window(), *(one() for _ in range(conns)))
    ms = [x * 1000 for x in latencies]
    return {"path": path, "requests": len(ms), "rps": round(len(ms) / duration),
            "p50_ms": round(pct(ms, 0.5), 2), "p99_ms": round(pct(ms, 0.99), 2),
            "statuses": statuses, "client_cpu_share": round(cpu["client"], 2),
            "server_cpu_share": round(cpu["server"], 2)}


def run_load(port: int, path: str, headers: list[str], args: argparse.Namespace,
             server_pid: int) -> dict[str, Any]:
    """The load generator, in its own process."""
    cmd = [sys.executable, __file__, "--load-port", str(port), "--load-path", path,
           "--conns", str(args.conns), "--duration", str(args.duration),
           "--server-pid", str(server_pid)]
    for h in headers:
        cmd += ["--load-header", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# With --gc-log the gateway process imports this (a sitecustomize on its PYTHONPATH): it
# notes every cyclic-collector run that holds the interpreter (so the event loop) for
# 10 ms or more. Off by default: the measured gateway runs as shipped.
GC_LOG_SITE = """
import gc, os, sys, time
_start = [0.0]
_out = os.environ["BENCH_GC_LOG"]

_cpu = [0.0]

def _note(phase, info):
    if phase == "start":
        _start[0] = time.perf_counter()
        _cpu[0] = time.thread_time()
        return
    ms = (time.perf_counter() - _start[0]) * 1000
    if ms >= 10 and "run" in sys.argv:
        cpu = (time.thread_time() - _cpu[0]) * 1000  # the rest: waiting for a CPU
        with open(_out, "a") as f:
            f.write(f"{info['generation']} {ms:.1f} {info['collected']} "
                    f"{gc.get_freeze_count()} {time.time():.1f} {cpu:.1f}\\n")

gc.callbacks.append(_note)
"""


# With --trace-steps the gateway process times the two commits on an offer's way to the
# phone (in their worker threads: the fsyncs), appended to a file per call.
STEPS_SITE = """
import os, sys, time
if "run" in sys.argv:
    from storegate.adapters import app_inbox, redemption_sqlite
    _steps = os.environ["BENCH_STEPS_LOG"]

    def _timed(cls, name, label):
        orig = getattr(cls, name)

        def timed(self, *a, **k):
            t = time.perf_counter()
            try:
                return orig(self, *a, **k)
            finally:
                ms = (time.perf_counter() - t) * 1000
                with open(_steps, "a") as f:
                    f.write(f"{label} {ms:.2f} {time.time():.3f}\\n")
        setattr(cls, name, timed)

    if hasattr(redemption_sqlite.RedemptionStore, "issue_many"):
        _timed(redemption_sqlite.RedemptionStore, "issue_many", "ledger_issue_many")
    else:  # a gateway from before group commit: one transaction per offer
        _timed(redemption_sqlite.RedemptionStore, "issue", "ledger_issue")
    _timed(app_inbox.AppInbox, "commit", "inbox_commit")
"""


def step_times(path: Path, since: float, until: float) -> dict[str, Any]:
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    by: dict[str, list[float]] = {}
    for label, ms, when in rows:
        if since <= float(when) <= until:
            by.setdefault(label, []).append(float(ms))
    return {k: summary(v) for k, v in sorted(by.items())}


def gc_pauses(path: Path, until: float) -> dict[str, Any]:
    """Pauses up to ``until`` (the end of the measurement: not the gateway's stop)."""
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    by_gen: dict[str, list[tuple[float, float]]] = {}
    for gen, ms, _, _, when, cpu in rows:  # collected, frozen objects
        if float(when) > until:
            continue
        by_gen.setdefault(f"gen{gen}", []).append((float(ms), float(cpu)))
    return {g: {"count": len(v), "max_ms": max(w for w, _ in v),
                "total_ms": round(sum(w for w, _ in v)),
                "max_cpu_ms": max(c for _, c in v)}  # the rest: waiting for a CPU
            for g, v in sorted(by_gen.items())}


# --- the clients held open: phones on WebSocket, tills on SSE ------------------------


class Watched:
    """Frames stamped on arrival, parsed later: ``first(pred, start)`` waits for the
    first from index ``start`` that matches, and returns its arrival time. The text is
    kept as it came and parsed only when asked: 50 screens get each frame at once,
    and parsing each on receipt would stamp the later ones late by the others'
    parsing (the bench measuring itself)."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, float, str]] = []  # perf, wall, JSON text
        self._parsed: dict[int, dict[str, Any]] = {}
        self._wake: asyncio.Future[None] | None = None

    def push(self, text: str, perf: float, wall: float) -> None:
        self.frames.append((perf, wall, text))
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def frame(self, i: int) -> tuple[float, float, dict[str, Any]]:
        perf, wall, text = self.frames[i]
        parsed = self._parsed.get(i)
        if parsed is None:
            parsed = self._parsed[i] = json.loads(text)
        return perf, wall, parsed

    async def first(self, pred: Callable[[dict[str, Any]], bool],
                    start: int = 0) -> tuple[float, float, dict[str, Any]]:
        i = start
        while True:
            while i < len(self.frames):
                hit = self.frame(i)
                i += 1
                if pred(hit[2]):
                    return hit
            self._wake = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._wake, TIMEOUT_S)


class Phone(Watched):
    """A customer's app on the WebSocket; its frames are the offers pushed to it
    (stamped as the message is handed over, keep-alives left out unparsed)."""

    def __init__(self, customer: str) -> None:
        super().__init__()
        self.customer = customer

    async def hold(self, port: int, ready: asyncio.Semaphore,
                   connected: Callable[[], None]) -> None:
        from websockets.asyncio.client import connect  # noqa: PLC0415
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415
        from websockets.typing import Subprotocol  # noqa: PLC0415

        token = customer_token(self.customer, issued_at=time.time())
        async with ready:
            ws = await connect(f"ws://127.0.0.1:{port}/app/ws", ping_interval=None,
                               subprotocols=[Subprotocol("storegate.v1"),
                                             Subprotocol(f"bearer.{token}")])
        connected()
        with contextlib.suppress(ConnectionClosed):  # reported: still_connected
            async with ws:
                async for text in ws:
                    perf, wall = time.perf_counter(), time.time()
                    if '"kind":"offer"' in text:
                        self.push(str(text), perf, wall)


class Till(Watched):
    """A till screen on SSE (a raw socket: HTTP/1.1, chunked); its frames are the
    lane's states, stamped when their chunk is read."""

    def __init__(self, cookie: str, lane: str = "lane-1") -> None:
        super().__init__()
        self.cookie = cookie
        self.lane = lane

    async def hold(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /lanes/{self.lane}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Cookie: sg_session={self.cookie}\r\nAccept: text/event-stream\r\n"
                     "\r\n".encode())
        buffer = ""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if int(head[9:12]) != 200:
                raise RuntimeError(f"till stream: {head[:100]!r}")
            while size := int((await reader.readline()).strip() or b"0", 16):
                perf, wall = time.perf_counter(), time.time()  # the chunk is here
                buffer += (await reader.readexactly(size + 2))[:-2].decode()
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    for line in block.split("\n"):
                        if line.startswith("data: "):
                            self.push(line[6:], perf, wall)
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # reported: still_connected
        finally:
            writer.close()


def shown(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: (f.get("customer") or {}).get("greeting_name") == name


def cleared(f: dict[str, Any]) -> bool:
    return f.get("customer") is None and not f.get("present")


# --- the run --------------------------------------------------------------------------


def lane_id(k: int) -> str:
    return f"lane-{k + 1}"


def config_text(http_port: int, printers: list[PtyDevice]) -> str:
    """lane-1 at zone "checkout"; with --lanes, lane-k at zone "checkout-k"."""
    template = REPO / "firmware-configs" / "pos" / "templates" / "ru-generic.toml"
    lanes = "".join(f"""
[[pos.lanes]]
id = "{lane_id(k)}"
checkout_zone = "{"checkout" if k == 0 else f"checkout-{k + 1}"}"
template = "{template}"
[[pos.lanes.devices]]
role = "printer"
dialect = "escpos"
port = "{printer.path}"
""" for k, printer in enumerate(printers))
    zones = "".join(f"""
[[presence.zones]]
id = "checkout-{k + 1}"
scanners = ["node-{k + 1}"]
""" for k in range(1, len(printers)))
    staff = "".join(f"""
[[http.staff]]
lane = "{lane_id(k)}"
role = "cashier"
name = "till-{k + 1}"
pin_hash = "{pin_hash(CASHIER_PIN)}"
""" for k in range(len(printers)))
    return lanes + f"""
[privacy]
pseudonym_key = "{"ab" * 32}"
[presence]
[[presence.zones]]
id = "entrance"
scanners = ["node-a"]
[[presence.zones]]
id = "checkout"
scanners = ["node-c"]
{zones}
[checkin]
enabled = true
hold_s = 3600
[offers]
min_gap_s = 0
max_per_visit = 10
max_per_day = 10
{app_http_toml(http_port)}
signin_burst = 1000
signin_per_minute = 10000
checkin_burst = 1000
checkin_per_minute = 10000
{staff}"""


def poster(config: Path, zone: str, out: Path) -> str:
    import zxingcpp  # noqa: PLC0415 - dev extra: the poster as printed, read back
    from PIL import Image  # noqa: PLC0415

    r = storegate("posters", "-c", str(config), "--zone", zone, "--format", "png",
                  "--out", str(out))
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    [found] = zxingcpp.read_barcodes(Image.open(out / f"poster-{zone}.png"))
    return str(found.text)


def sched(pid: int) -> tuple[float, float]:
    """Seconds a process's main thread (the gateway's: its event loop) has spent on a
    CPU, and runnable but waiting for one (/proc/PID/schedstat): on a shared machine the
    second is time the loop could not run through no fault of its own."""
    on, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on) / 1e9, int(waiting) / 1e9


class Sched:
    """The share of a phase's wall time the gateway's and this process's main threads
    ran, and waited for a CPU."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.at = time.perf_counter()
        self.start = [sched(p) for p in pids]

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self.at
        out: dict[str, float] = {}
        for name, pid, (on0, wait0) in zip(("gateway", "bench"), self.pids, self.start,
                                           strict=True):
            on, waiting = sched(pid)
            out[f"{name}_loop_cpu_share"] = round((on - on0) / wall, 2)
            out[f"{name}_loop_waiting_for_cpu_share"] = round((waiting - wait0) / wall, 2)
        return out


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


async def measure(args: argparse.Namespace, port: int, gw_pid: int, bare_port: int,
                  bare_pid: int, codes: dict[str, str], customers: list[str],
                  ) -> dict[str, Any]:
    result: dict[str, Any] = {"rss_idle_mib": rss_mib(gw_pid)}
    phones = {c: Phone(c) for c in customers}
    tills: list[Till] = []
    connected = 0

    def one_more() -> None:
        nonlocal connected
        connected += 1

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http, \
            asyncio.TaskGroup() as tg:
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(64)  # connects in flight at once
        tasks = [tg.create_task(p.hold(port, gate, one_more)) for p in phones.values()]
        for n in range(args.screens):
            lane = lane_id(n % args.lanes)
            r = await http.post("/staff/signin", json={"lane": lane, "pin": CASHIER_PIN})
            r.raise_for_status()
            tills.append(Till(r.cookies["sg_session"], lane))
        # the screens a check-in at "checkout" changes: lane-1's (all of them: --lanes 1)
        watched = [t for t in tills if t.lane == "lane-1"]
        tasks += [tg.create_task(t.hold(port)) for t in tills]
        while connected < len(phones) or any(not t.frames for t in tills):
            await asyncio.sleep(0.05)
            if time.perf_counter() - t0 > 120:
                raise RuntimeError(f"only {connected} phones connected")
        result["connect_s"] = round(time.perf_counter() - t0, 1)
        await asyncio.sleep(1)  # the last subscriptions settle
        result["rss_connected_mib"] = rss_mib(gw_pid)
        # This process holds 1,050 client connections and every frame they get: its own
        # full collections (~100 ms) would stamp arrivals late and be counted against
        # the gateway. Its heap frozen, its collector off while it measures.
        gc.collect()
        gc.freeze()
        gc.disable()

        async def checkin(customer: str, zone: str) -> float:
            sent = time.perf_counter()
            r = await http.post("/app/checkin", json={"code": codes[zone]}, headers={
                "Authorization": f"Bearer {customer_token(customer, issued_at=time.time())}"})
            if r.status_code != 200:
                raise RuntimeError(f"check-in {r.status_code}: {r.text}")
            return sent

        def push_ms(phone: Phone) -> float:
            _, wall, message = phone.frame(0)
            return (wall - float(message["data"]["issued_at"])) * 1000

        # 1-2. paced: one customer at a time into the checkout zone and out again
        result["push_started"] = time.time()
        paced_sched = Sched(gw_pid, os.getpid())
        pushed: list[float] = []
        till_ms: list[float] = []
        for n, customer in enumerate(customers[:args.samples]):
            name = f"Bench {n:04d}"
            marks = [len(t.frames) for t in watched]
            sent = await checkin(customer, "checkout")
            hits = await asyncio.gather(*(t.first(shown(name), m) for t, m in zip(
                watched, marks, strict=True)))
            till_ms += [(perf - sent) * 1000 for perf, _, _ in hits]
            await phones[customer].first(lambda m: True)
            pushed.append(push_ms(phones[customer]))
            marks = [len(t.frames) for t in watched]
            sent = await checkin(customer, "entrance")
            hits = await asyncio.gather(*(t.first(cleared, m) for t, m in zip(
                watched, marks, strict=True)))
            till_ms += [(perf - sent) * 1000 for perf, _, _ in hits]
        result["push_paced"] = summary(pushed) | paced_sched.shares()
        result["till_update"] = summary(till_ms)
        # other lanes' screens: their snapshot, and nothing since (not their lane)
        result["other_lanes_frames"] = sum(len(t.frames) for t in tills if t not in watched)

        # 1b. burst: the rest check in at the entrance, many at once
        rest = customers[args.samples:]
        gate = asyncio.Semaphore(args.burst_concurrency)

        async def burst_one(customer: str) -> None:
            async with gate:
                await checkin(customer, "entrance")

        t_burst = time.perf_counter()
        burst_sched = Sched(gw_pid, os.getpid())
        await asyncio.gather(*(burst_one(c) for c in rest))
        await asyncio.gather(*(phones[c].first(lambda m: True) for c in rest))
        if rest:
            result["push_burst"] = summary([push_ms(phones[c]) for c in rest]) | \
                burst_sched.shares()
            result["push_burst"]["checkins_per_s"] = round(
                len(rest) / (time.perf_counter() - t_burst))

        result["push_ended"] = time.time()
        gc.enable()

        # 3. requests/s, everything still connected; the bare endpoint in between
        token = customer_token(customers[0], issued_at=time.time(), lifetime_s=3600)
        runs = {
            "bare": (bare_port, "/healthz", [], bare_pid),
            "healthz": (port, "/healthz", [], gw_pid),
            "offers": (port, "/app/offers", [f"Authorization: Bearer {token}"], gw_pid),
            "bare_offers": (bare_port, "/app/offers", [f"Authorization: Bearer {token}"],
                            bare_pid),
        }
        api: dict[str, Any] = {}
        for label, (p, path, headers, pid) in runs.items():
            api[label] = await asyncio.to_thread(run_load, p, path, headers, args, pid)
        bare_rps = api["bare"]["rps"]
        for label in ("healthz", "offers", "bare_offers"):
            api[label]["ratio_to_bare"] = round(api[label]["rps"] / bare_rps, 2)
        result["api"] = api
        result["rss_end_mib"] = rss_mib(gw_pid)
        result["measured_until"] = time.time()
        result["bare_rss_mib"] = rss_mib(bare_pid)
        result["still_connected"] = {
            "phones": sum(not t.done() for t in tasks[:len(phones)]),
            "tills": sum(not t.done() for t in tasks[len(phones):])}
        for t in tasks:
            t.cancel()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--screens", type=int, default=50)
    ap.add_argument("--lanes", type=int, default=1, help="spread the screens over this "
                    "many lanes (1: all on lane-1, the worst case)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--burst-concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--gc-log", action="store_true", help="note the gateway's collector "
                    "pauses of 10 ms or more (a sitecustomize in the gateway process)")
    # internal: the child processes
    ap.add_argument("--trace-steps", action="store_true", help="time the gateway's "
                    "ledger and inbox commits (their fsyncs) during the push phases")
    ap.add_argument("--out", type=Path, help="write the JSON here (default: "
                    "bench/results/http.json, or http-<N>-lanes.json)")
    ap.add_argument("--load-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--load-path", help=argparse.SUPPRESS)
    ap.add_argument("--load-header", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_port:
        print(json.dumps(run_async(load(args.load_port, args.load_path, args.load_header,
                                        args.conns, args.duration, warmup=1.0,
                                        server_pid=args.server_pid))))
        return
    if args.samples > args.clients:
        ap.error("--samples is at most --clients")

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        broker = Mosquitto(root / "mosquitto")
        broker.start()
        printers = [PtyDevice(root / "dev", f"usb-Epson_TM-T20-{k}-if00")
                    for k in range(args.lanes)]
        port, bare_port = free_port(), free_port()
        storage = root / "state" / "outbox.db"
        config = write_config(root / "gw.toml", port=broker.port, storage=storage,
                              extra=config_text(port, printers))
        if args.gc_log or args.trace_steps:
            (root / "site").mkdir()
            (root / "site" / "sitecustomize.py").write_text(
                (GC_LOG_SITE if args.gc_log else "")
                + (STEPS_SITE if args.trace_steps else ""))
            os.environ["BENCH_GC_LOG"] = str(root / "gc.log")
            os.environ["BENCH_STEPS_LOG"] = str(root / "steps.log")
            os.environ["PYTHONPATH"] = os.pathsep.join(
                x for x in (str(root / "site"), os.environ.get("PYTHONPATH")) if x)
        gw = start_run(config, stderr=root / "gw.log")
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
        sub = Subscriber(broker.port)
        result: dict[str, Any] = {}
        try:
            wait_for(lambda: sub.retained_state() == "online", 30, "birth certificate")

            def up(p: int) -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=1).is_success
                except httpx.TransportError:
                    return False
            wait_for(lambda: up(port) and up(bare_port), 30, "both HTTP servers")
            customers = [f"cust-bench-{n:05d}" for n in range(args.clients)]
            seal_key = sub.status[-1]["data"]["seal_key"]
            sub.client.publish(topic("customers"), CENTRAL.customers("upsert", [
                customer_record(c, 1, greeting_name=f"Bench {n:04d}")
                for n, c in enumerate(customers)], gateways={"g1": seal_key},
                request_id="enrol"), qos=1)
            sub.client.publish(topic("campaigns"), CENTRAL.sign("campaigns", {
                "op": "upsert", "request_id": "welcome", "campaigns": [CAMPAIGN]}), qos=1)
            for kind in ("customers", "campaigns"):
                wait_for(lambda k=kind: bool(sub.of_type(f"storegate.gateway.{k}_applied.v1")),
                         60, f"{kind} applied")
            codes = {z: poster(config, z, root / "posters") for z in ("checkout", "entrance")}
            result |= run_async(measure(args, port, gw.pid, bare_port, bare.pid, codes,
                                       customers))
        finally:
            sub.close()
            for proc in (bare, gw):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            broker.kill()
            log = (root / "gw.log").read_text()
            if args.trace_steps and "push_started" in result:
                result["gateway_commits_during_pushes"] = step_times(
                    root / "steps.log", result["push_started"], result["push_ended"])
            if args.gc_log:
                result["gateway_gc_pauses_10ms"] = gc_pauses(
                    root / "gc.log", result.get("measured_until", time.time()))
                if (root / "gc.log").exists():
                    print((root / "gc.log").read_text(), file=sys.stderr)
            if "Traceback" in log or "config error" in log:
                print(log[-3000:], file=sys.stderr)
    result["setup"] = {"clients": args.clients, "screens": args.screens, "lanes": args.lanes,
                       "samples": args.samples, "conns": args.conns,
                       "duration_s": args.duration, "cpus": os.cpu_count(),
                       "gateway": "storegate run (real process)",
                       # which source ran: PYTHONPATH=<a worktree>/src runs another
                       # commit's gateway with this bench (a baseline in the same minutes)
                       "gateway_src": gateway_src()}
    report(result)
    out = args.out or (RESULTS if args.lanes == 1
                       else RESULTS.with_name(f"http-{args.lanes}-lanes.json"))
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def gateway_src() -> str:
    """Where the gateway process imports storegate from (its environment, as run)."""
    return subprocess.run(
        [sys.executable, "-c", "import storegate; print(storegate.__file__)"], env=env(),
        capture_output=True, text=True, check=True).stdout.strip()


def report(r: dict[str, Any]) -> None:
    s = r["setup"]
    lanes = "all on lane-1" if s.get("lanes", 1) == 1 else \
        f"over {s['lanes']} lanes, {-(-s['screens'] // s['lanes'])} on lane-1"
    print(f"a real `storegate run`, {s['clients']} app clients on WebSocket, "
          f"{s['screens']} till screens on SSE ({lanes}), {s['cpus']} CPUs; "
          f"connected in {r['connect_s']} s")

    def row(label: str, x: dict[str, Any], target: float | None = None) -> None:
        flag = "" if target is None else (
            f"  target p99 <= {target:g} ms: {'met' if x['p99_ms'] <= target else 'MISSED'}")
        print(f"  {label:42s} n={x['n']:6d}  p50 {x['p50_ms']:7.2f} ms  "
              f"p99 {x['p99_ms']:7.2f} ms  max {x['max_ms']:7.2f} ms{flag}")

    def cpu(x: dict[str, Any]) -> None:
        if "gateway_loop_cpu_share" in x:
            print(f"  {'':42s} gateway loop: on a CPU {x['gateway_loop_cpu_share']:.2f}, "
                  f"waiting for one {x['gateway_loop_waiting_for_cpu_share']:.2f}; "
                  f"bench: {x['bench_loop_cpu_share']:.2f}, "
                  f"{x['bench_loop_waiting_for_cpu_share']:.2f} (shares of the phase)")

    row("offer decision -> app (paced)", r["push_paced"], TARGETS["push_p99_ms"])
    cpu(r["push_paced"])
    if "push_burst" in r:
        row(f"offer decision -> app (burst, {r['push_burst']['checkins_per_s']} check-ins/s)",
            r["push_burst"], TARGETS["push_p99_ms"])
        cpu(r["push_burst"])
    row("check-in sent -> till frame (x lane-1's screens)", r["till_update"],
        TARGETS["till_p99_ms"])
    for label, x in r["api"].items():
        ratio = x.get("ratio_to_bare")
        verdict = "" if ratio is None else f"  {ratio:.2f}x bare" if label.startswith(
            "bare") else (  # the bare offers-shaped route: FastAPI's floor, no target
            f"  {ratio:.2f}x bare ({'met' if ratio >= TARGETS['api_ratio'] else 'MISSED'}"
            f" >= {TARGETS['api_ratio']:.2f})")
        print(f"  GET {x['path']:14s} ({label:11s}) {x['rps']:6d} req/s  p50 {x['p50_ms']:6.2f} ms"
              f"  p99 {x['p99_ms']:6.2f} ms  statuses {x['statuses']}  CPU: server "
              f"{x['server_cpu_share']:.2f}, client {x['client_cpu_share']:.2f}{verdict}")
    if "gateway_commits_during_pushes" in r:
        for label, x in r["gateway_commits_during_pushes"].items():
            print(f"  gateway {label:18s} (thread, with its fsync) n={x['n']:6d}  "
                  f"p50 {x['p50_ms']:7.2f} ms  p99 {x['p99_ms']:7.2f} ms  "
                  f"max {x['max_ms']:7.2f} ms")
    if "gateway_gc_pauses_10ms" in r:
        print(f"  gateway collector pauses >= 10 ms over the run: {r['gateway_gc_pauses_10ms']}")
    print(f"  gateway RSS: idle {r['rss_idle_mib']} MiB, all connected "
          f"{r['rss_connected_mib']} MiB, at the end {r['rss_end_mib']} MiB "
          f"(bare FastAPI process: {r['bare_rss_mib']} MiB); still connected at the end: "
          f"{r['still_connected']}")


if __name__ == "__main__":
    main()
