"""Benchmark: signed commands and sealed identities, against the bare crypto they use.

One run:

  verify     N signed replay commands: (a) bare Ed25519 verify of the same bytes
             (baseline), (b) storegate's full envelope check (core.trust.verify),
             (c) the command thread's whole path (topic, envelope, the persistent
             command-id ledger with its fsync, payload validation)
  sync       an identities ``replace`` of 100,000 records: central signs and seals it,
             then the gateway's command thread verifies, validates and unseals it while
             the event loop runs a 5 ms ticker, then the presence service applies it;
             reports each stage's time and the longest the event loop was held

    .venv/bin/python bench/bench_commands.py [--commands 5000] [--identities 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from storegate.adapters.command_ledger import CommandLedger  # noqa: E402
from storegate.adapters.identities_sqlite import IdentityStore  # noqa: E402
from storegate.app import collector  # noqa: E402
from storegate.app.commands import CommandHandler  # noqa: E402
from storegate.app.presence import PresenceService  # noqa: E402
from storegate.core import seal  # noqa: E402
from storegate.core.ble.eid import EidResolver, Identity  # noqa: E402
from storegate.core.commands import (  # noqa: E402
    IdentitiesCommand,
    IdentityChange,
    IdentityRecord,
    open_identities,
    seal_identities,
    validate_payload,
)
from storegate.core.presence.pipeline import PresencePipeline  # noqa: E402
from storegate.core.presence.settings import PresenceSettings, Zone  # noqa: E402
from storegate.core.trust import TrustPolicy, Verified, b64d, sign_command, verify  # noqa: E402

T0 = 1_796_000_000.0


class NoOutbox:
    """Answers are dropped (the outbox bench measures the outbox); replays find nothing."""

    def submit(self, drafts: Any) -> None:
        pass

    def requeue(self, first: int, last: int, done: Any) -> None:
        done([], [])


def bench_verify(n: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    policy = TrustPolicy({"k1": key.public_key()}, 3600, 60)
    now = time.time()
    msgs = [sign_command(key, kid="k1", command="replay", store="s1",
                         payload={"gateway": "g1", "from_sequence": i + 1,
                                  "to_sequence": i + 10}, issued_at=now,
                         command_id=f"c-{i}") for i in range(n)]
    pairs = [(b64d(json.loads(m)["sig"]), b64d(json.loads(m)["signed"])) for m in msgs]
    pub = key.public_key()
    t = time.perf_counter()
    for sig, signed in pairs:
        pub.verify(sig, signed)
    raw = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for m in msgs:
        assert isinstance(verify(m, name="replay", store="s1", policy=policy, now=now),
                          Verified)
    envelope = n / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = CommandLedger(Path(tmp) / "commands.db", keep_s=3660)
        handler = CommandHandler(
            store_id="s1", gateway_id="g1", policy=policy, max_bytes=1 << 26,
            outbox=NoOutbox(), submit=NoOutbox().submit,  # type: ignore[arg-type]
            ledger=ledger, seal_key=X25519PrivateKey.generate(), resend=lambda s: None,
            identities=lambda c, done: None, wall_clock=time.time)
        t = time.perf_counter()
        for m in msgs:  # checked in full, its id recorded (fsync), requeued, answered
            handler.handle("storegate/v1/s1/commands/replay", m)
        path = n / (time.perf_counter() - t)
        assert handler.rejected_total == 0
        ledger.close()
    return {"raw_verify_per_s": raw, "envelope_per_s": envelope, "handler_per_s": path}


def bench_sync(n: int) -> dict[str, Any]:
    rng = random.Random(3)
    people = [Identity(f"c{i:06d}", rng.randbytes(16), 10, rng.randrange(1 << 20),
                       T0 - 3600) for i in range(n)]
    central = Ed25519PrivateKey.generate()
    gw_key = X25519PrivateKey.generate()
    out: dict[str, Any] = {"identities": n}

    t = time.perf_counter()
    records = [IdentityRecord.of(i) for i in people]
    sealed, wrapped = seal_identities(records, {"g1": gw_key.public_key()}, store="s1",
                                      rand=os.urandom)
    message = sign_command(central, kid="k1", command="identities", store="s1",
                           payload={"op": "replace", "identities": sealed,
                                    "sealed_to": wrapped}, issued_at=T0, command_id="sync")
    out["central_seal_sign_s"] = time.perf_counter() - t
    out["message_mib"] = len(message) / 2**20
    policy = TrustPolicy({"k1": central.public_key()}, 3600, 60)

    # the stages, one by one (single thread)
    t = time.perf_counter()
    checked = verify(message, name="identities", store="s1", policy=policy, now=T0)
    out["verify_s"] = time.perf_counter() - t
    assert isinstance(checked, Verified)
    t = time.perf_counter()
    cmd = validate_payload("identities", checked.payload, now=T0)
    out["validate_s"] = time.perf_counter() - t
    assert isinstance(cmd, IdentitiesCommand)
    t = time.perf_counter()
    change = open_identities(cmd, key=gw_key, store="s1", gateway="g1")
    out["unseal_s"] = time.perf_counter() - t
    assert isinstance(change, IdentityChange)
    assert len(change.identities) == n

    # as in the gateway: the command thread checks and opens, the loop applies
    async def whole() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory() as tmp:
            store = IdentityStore(Path(tmp) / "ids.db")
            ledger = CommandLedger(Path(tmp) / "commands.db", keep_s=3660)
            pipe = PresencePipeline(PresenceSettings(zones=(Zone("z", ("s",)),)),
                                    EidResolver(), os.urandom)
            service = PresenceService(pipe, identities=store, submit=lambda drafts: None)
            applied = asyncio.Event()
            marks: dict[str, float] = {}

            def hand_over(c: IdentityChange, done: Any) -> None:
                marks["opened"] = time.perf_counter()

                async def apply() -> None:
                    with collector.paused():  # as Gateway._apply_identities does
                        await service.apply_identities(c)
                    applied.set()
                loop.call_soon_threadsafe(lambda: loop.create_task(apply()))

            handler = CommandHandler(
                store_id="s1", gateway_id="g1", policy=policy, max_bytes=1 << 28,
                outbox=NoOutbox(), submit=NoOutbox().submit,  # type: ignore[arg-type]
                ledger=ledger, seal_key=gw_key, resend=lambda s: None, identities=hand_over,
                wall_clock=lambda: T0)
            stalls: list[tuple[float, float]] = []  # (when, how long beyond the 5 ms)

            async def ticker() -> None:
                last = time.perf_counter()
                while not applied.is_set():
                    await asyncio.sleep(0.005)
                    now = time.perf_counter()
                    stalls.append((now, now - last - 0.005))
                    last = now

            tick = asyncio.create_task(ticker())
            t0 = time.perf_counter()
            worker = threading.Thread(target=handler.handle,
                                      args=("storegate/v1/s1/commands/identities", message))
            worker.start()
            await applied.wait()
            done = time.perf_counter()
            await tick
            worker.join()
            assert len(pipe.resolver) == n
            store.close()
            ledger.close()
        during = [d for w, d in stalls if w <= marks["opened"]]
        after = [d for w, d in stalls if w > marks["opened"]]
        every = sorted(d for _, d in stalls)
        return {"command_thread_s": marks["opened"] - t0, "total_s": done - t0,
                "apply_s": done - marks["opened"], "max_loop_stall_ms": every[-1] * 1000,
                "p99_loop_stall_ms": every[int(len(every) * 0.99)] * 1000,
                "max_stall_command_thread_ms": max(during, default=0) * 1000,
                "max_stall_apply_ms": max(after, default=0) * 1000}

    out.update(asyncio.run(whole()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=5000)
    ap.add_argument("--identities", type=int, default=100_000)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "commands.json"))
    args = ap.parse_args()
    res: dict[str, Any] = {"cpus": os.cpu_count(), "seal_key": seal.KEY_BYTES}
    v = bench_verify(args.commands)
    res["verify"] = v
    base = v["raw_verify_per_s"]
    print(f"(a) bare Ed25519 verify            {base:>10,.0f} /s   ratio 1.00")
    print(f"(b) envelope check (core.trust)     {v['envelope_per_s']:>10,.0f} /s   ratio "
          f"{v['envelope_per_s'] / base:.2f}")
    print(f"(c) command thread, whole path      {v['handler_per_s']:>10,.0f} /s   ratio "
          f"{v['handler_per_s'] / base:.2f}  (ledger fsync per command)")
    s = bench_sync(args.identities)
    res["sync"] = s
    print(f"identities replace of {s['identities']:,} records ({s['message_mib']:.1f} MiB): "
          f"central seals+signs {s['central_seal_sign_s']:.2f} s")
    print(f"  gateway: verify {s['verify_s']:.3f} s, validate {s['validate_s']:.2f} s, "
          f"unseal {s['unseal_s']:.2f} s")
    print(f"  whole, in the gateway's threads: command thread {s['command_thread_s']:.2f} s, "
          f"apply {s['apply_s']:.2f} s, total {s['total_s']:.2f} s; event loop held at most "
          f"{s['max_loop_stall_ms']:.0f} ms (p99 {s['p99_loop_stall_ms']:.0f} ms; while the "
          f"command thread works {s['max_stall_command_thread_ms']:.0f} ms, while applying "
          f"{s['max_stall_apply_ms']:.0f} ms)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
