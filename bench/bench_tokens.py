"""Benchmark: offer tokens against the bare crypto they use, QR rendering, the ledger.

One run:

  tokens     N tokens: (a) bare Ed25519 sign / verify of the same 71 signed bytes
             (baseline), (b) storegate's whole token: sign_token (hashes, pack, base32
             text) and verify_token (decode, canonical check, key lookup, signature,
             store, time, customer tag); the ratio to the baseline
  qr         a 186-character token as PNG (Pillow, 8 px modules) and SVG, ms per code
  ledger     reserve, then confirm, on a real SQLite file (synchronous FULL: one fsync
             each) in bench/results: ms per scan, p50 and p99 (why the service does the
             ledger work off the event loop on slow storage)

    .venv/bin/python bench/bench_tokens.py [--tokens 5000] [--codes 100] [--scans 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from storegate.adapters import qr  # noqa: E402
from storegate.adapters.redemption_sqlite import RedemptionStore  # noqa: E402
from storegate.core.personal import tokens as t  # noqa: E402

STORE = "store-0042"
T0 = 1_796_000_000


def per_s(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_tokens(n: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    signer = t.TokenSigner(key, STORE)
    keys = {signer.kid: pub}
    ids = [os.urandom(16) for _ in range(n)]
    msgs = [b"storegate-offer-token\0" + os.urandom(49) for _ in range(n)]

    start = time.perf_counter()
    sigs = [key.sign(m) for m in msgs]
    raw_sign = time.perf_counter() - start
    start = time.perf_counter()
    texts = [signer.sign(token_id=i, offer="spring-sale", customer=f"cust-{k}",
                         issued_at=T0, expires_at=T0 + 86400) for k, i in enumerate(ids)]
    token_sign = time.perf_counter() - start

    start = time.perf_counter()
    for m, s in zip(msgs, sigs, strict=True):
        pub.verify(s, m)
    raw_verify = time.perf_counter() - start
    start = time.perf_counter()
    for k, text in enumerate(texts):
        r = t.verify_token(text, keys=keys, store=STORE, now=T0 + 10, customer=f"cust-{k}")
        assert isinstance(r, t.VerifiedToken)
    token_verify = time.perf_counter() - start
    start = time.perf_counter()
    for text in texts:  # what a flood of garbage costs: refused before any crypto
        t.verify_token(text[:-1] + "#", keys=keys, store=STORE, now=T0)
    garbage = time.perf_counter() - start
    return {"tokens": n, "token_chars": len(texts[0]),
            "raw_sign_per_s": per_s(n, raw_sign), "token_sign_per_s": per_s(n, token_sign),
            "raw_verify_per_s": per_s(n, raw_verify),
            "token_verify_per_s": per_s(n, token_verify),
            "garbage_reject_per_s": per_s(n, garbage)}


def bench_qr(n: int) -> dict[str, Any]:
    text = t.sign_token(Ed25519PrivateKey.generate(), store=STORE, token_id=os.urandom(16),
                        offer="spring-sale", customer="cust-1", issued_at=T0,
                        expires_at=T0 + 86400)
    qr.png(text)  # imports and first-use caches out of the figures
    qr.svg(text)
    out: dict[str, Any] = {"version": qr.code(text).version}
    for name, render in (("png", qr.png), ("svg", qr.svg)):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            render(text)
            times.append((time.perf_counter() - start) * 1000)
        out[f"{name}_ms_p50"] = statistics.median(times)
        out[f"{name}_ms_p99"] = statistics.quantiles(times, n=100)[98]
    out["png_bytes"] = len(qr.png(text))
    out["svg_bytes"] = len(qr.svg(text))
    return out


def bench_ledger(n: int) -> dict[str, Any]:
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=results) as tmp:
        store = RedemptionStore(Path(tmp) / "redemption.db", reservation_timeout_s=600)
        for i in range(n):
            store.issue(f"{i:032x}", campaign="c", customer="cust", issued_at=T0,
                        expires_at=T0 + 86400)
        reserve, confirm = [], []
        for i in range(n):
            start = time.perf_counter()
            store.reserve(f"{i:032x}", "lane-1", f"tx-{i}", T0 + 1)
            reserve.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            store.confirm(f"tx-{i}", T0 + 2)
            confirm.append((time.perf_counter() - start) * 1000)
        store.close()
    q = statistics.quantiles
    return {"scans": n, "reserve_ms_p50": statistics.median(reserve),
            "reserve_ms_p99": q(reserve, n=100)[98], "confirm_ms_p50": statistics.median(confirm),
            "confirm_ms_p99": q(confirm, n=100)[98]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=5000)
    ap.add_argument("--codes", type=int, default=100)
    ap.add_argument("--scans", type=int, default=300)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "tokens.json"))
    args = ap.parse_args()
    res: dict[str, Any] = {"cpus": os.cpu_count()}
    tk = res["tokens"] = bench_tokens(args.tokens)
    print(f"tokens ({tk['token_chars']} characters):")
    print(f"  (a) bare Ed25519 sign     {tk['raw_sign_per_s']:>10,.0f} /s   ratio 1.00")
    print(f"  (b) sign_token            {tk['token_sign_per_s']:>10,.0f} /s   ratio "
          f"{tk['token_sign_per_s'] / tk['raw_sign_per_s']:.2f}")
    print(f"  (a) bare Ed25519 verify   {tk['raw_verify_per_s']:>10,.0f} /s   ratio 1.00")
    print(f"  (b) verify_token          {tk['token_verify_per_s']:>10,.0f} /s   ratio "
          f"{tk['token_verify_per_s'] / tk['raw_verify_per_s']:.2f}")
    print(f"  garbage of token length refused {tk['garbage_reject_per_s']:>10,.0f} /s")
    q = res["qr"] = bench_qr(args.codes)
    print(f"QR version {q['version']} (level M): PNG {q['png_ms_p50']:.1f} ms p50, "
          f"{q['png_ms_p99']:.1f} ms p99, {q['png_bytes']} B; SVG {q['svg_ms_p50']:.1f} ms "
          f"p50, {q['svg_ms_p99']:.1f} ms p99, {q['svg_bytes']} B")
    lg = res["ledger"] = bench_ledger(args.scans)
    print(f"ledger (synchronous FULL, {lg['scans']} scans): reserve {lg['reserve_ms_p50']:.2f} "
          f"ms p50 / {lg['reserve_ms_p99']:.2f} ms p99; confirm {lg['confirm_ms_p50']:.2f} ms "
          f"p50 / {lg['confirm_ms_p99']:.2f} ms p99")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
