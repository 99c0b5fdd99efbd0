"""The serial tap against real pyserial on pseudo-terminals: order, completeness,
silence on the line, unplug and replug, a missing or busy port, and clean stops."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial  # type: ignore[import-untyped, unused-ignore]

from storegate.adapters import serial_tap
from storegate.adapters.serial_tap import SerialTap, describe_open_error
from storegate.core.backoff import Backoff
from tests.support.pty_lane import PtyDevice

LOGGER = "storegate.adapters.serial_tap"
FAST = Backoff(min_s=0.02, max_s=0.2)


class Received:
    """What ``on_bytes`` saw, and on which thread."""

    def __init__(self) -> None:
        self.chunks: list[tuple[bytes, float]] = []
        self.threads: set[int] = set()

    def __call__(self, data: bytes, ts: float) -> None:
        self.chunks.append((data, ts))
        self.threads.add(threading.get_ident())

    @property
    def data(self) -> bytes:
        return b"".join(d for d, _ in self.chunks)


def make_tap(port: Path | str, on_bytes: Callable[[bytes, float], None], **kw: Any) -> SerialTap:
    settings: dict[str, Any] = {
        "name": "lane-1/printer", "baudrate": 9600, "bytesize": 8, "parity": "N",
        "stopbits": 1, "xonxoff": False, "rtscts": False, "backoff": FAST, "poll_s": 0.02,
    }
    settings.update(kw)
    return SerialTap(port=str(port), on_bytes=on_bytes, **settings)


async def until(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll without blocking the loop; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.002)
    return time.monotonic() - start


# "Prompt" below means well inside the poll or back-off the tap would otherwise sleep
# through (those are set to several times this): a structural bound, not a speed target.
PROMPT_S = 30.0


async def tapping(tap: SerialTap, body: Callable[[asyncio.Event], Awaitable[None]]) -> float:
    """Run ``tap`` around ``body``; returns how long ``run`` took to end after stop."""
    stop = asyncio.Event()
    task = asyncio.create_task(tap.run(stop))
    try:
        await body(stop)
    finally:
        stop.set()
        t0 = time.monotonic()
        await asyncio.wait_for(task, PROMPT_S)
    return time.monotonic() - t0


def tap_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("serial-tap")]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[PtyDevice]:
    with PtyDevice(tmp_path) as dev:
        yield dev


@pytest.mark.e2e
def test_bytes_arrive_complete_in_order_on_the_loop_and_nothing_is_sent(
    device: PtyDevice,
) -> None:
    rng = random.Random(7)
    payload = rng.randbytes(200_000)
    chunks, i = [], 0
    while i < len(payload):
        n = rng.choice((1, 2, 7, 64, 500, 4096, 9000))
        chunks.append(payload[i:i + n])
        i += n
    got = Received()
    tap = make_tap(device.path, got)
    loop_thread = threading.get_ident()

    def play() -> None:
        for c in chunks:
            device.write(c)

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: tap.state == "open", 15, "the port to open")
        await asyncio.to_thread(play)
        await until(lambda: len(got.data) >= len(payload), 10, "all bytes")

    asyncio.run(tapping(tap, body))
    assert got.data == payload
    stamps = [ts for _, ts in got.chunks]
    assert stamps == sorted(stamps)
    assert got.threads == {loop_thread}
    device.collect()
    assert device.written == b""
    snap = tap.status()
    assert snap.bytes_total == len(payload)
    assert snap.kind == "serial"
    assert snap.state == "stopped"
    assert snap.opens_total == 1
    assert snap.line == "9600 8N1"


@pytest.mark.e2e
def test_flow_control_bytes_pass_through_even_on_an_xonxoff_line(device: PtyDevice) -> None:
    # With IXON on, the tty layer would eat 0x11/0x13; a tap must see every byte.
    got = Received()
    tap = make_tap(device.path, got, xonxoff=True, rtscts=True)
    every_byte = bytes(range(256)) * 4

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: tap.state == "open", 15, "the port to open")
        device.write(every_byte)
        await until(lambda: len(got.data) >= len(every_byte), 15, "all bytes")

    asyncio.run(tapping(tap, body))
    assert got.data == every_byte
    assert device.written == b""
    assert tap.status().flow == "rtscts"


@pytest.mark.e2e
def test_unplug_is_detected_and_bytes_after_replug_arrive(
    device: PtyDevice, caplog: pytest.LogCaptureFixture
) -> None:
    got = Received()
    tap = make_tap(device.path, got)
    most_threads = 0

    async def watch_threads() -> None:
        nonlocal most_threads
        while True:
            most_threads = max(most_threads, len(tap_threads()))
            await asyncio.sleep(0.001)

    async def body(stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(watch_threads())
        await until(lambda: tap.state == "open", 15, "the port to open")
        device.write(b"before\n")
        await until(lambda: got.data == b"before\n", 15, "bytes before the unplug")
        device.unplug()
        took = await until(lambda: tap.status().disconnects_total == 1, 15,
                           "the unplug to be noticed")
        print(f"unplug noticed after {took * 1000:.1f} ms")
        assert tap.state != "open"
        device.replug()
        await until(lambda: tap.state == "open" and tap.opens_total == 2, 15, "the reopen")
        device.write(b"after\n")
        await until(lambda: got.data == b"before\nafter\n", 15, "bytes after the replug")
        watcher.cancel()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(tapping(tap, body))
    snap = tap.status()
    assert snap.disconnects_total == 1
    assert snap.last_error is None
    assert most_threads == 1
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "disconnected" in warnings[0].getMessage()
    assert str(device.path) in warnings[0].getMessage()
    device.collect()
    assert device.written == b""


@pytest.mark.e2e
def test_a_missing_port_is_waited_for_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = Received()
    port = tmp_path / "serial" / "by-id" / "usb-FTDI_lane1-if00-port0"
    tap = make_tap(port, got)
    devices: list[PtyDevice] = []
    looks = [0]  # the tap's looks for its port: the real os.path.exists, counted
    real_exists = os.path.exists

    def exists(path: Any) -> bool:
        if str(path) == str(port):
            looks[0] += 1
        return real_exists(path)

    monkeypatch.setattr(serial_tap.os.path, "exists", exists)

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: tap.last_error is not None, 15, "the first look for the port")
        assert tap.state == "waiting for device"
        assert "does not exist" in str(tap.last_error)
        # 15 looks that found nothing, to prove they are not each logged
        await until(lambda: looks[0] >= 15, 15, "15 looks for the port")
        assert tap.state == "waiting for device"
        assert len(tap_threads()) == 0  # no thread while there is nothing to read
        devices.append(PtyDevice(tmp_path))
        await until(lambda: tap.state == "open", 15, "the port to open once it appears")
        devices[0].write(b"hello")
        await until(lambda: got.data == b"hello", 15, "bytes")

    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            asyncio.run(tapping(tap, body))
    finally:
        for d in devices:
            d.close()
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "does not exist" in warnings[0].getMessage()
    assert tap.last_error is None


@pytest.mark.e2e
def test_a_second_tap_on_a_held_port_is_refused_clearly_and_steals_nothing(
    device: PtyDevice, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Received(), Received()
    a = make_tap(device.path, first, name="lane-1/a")
    b = make_tap(device.path, second, name="lane-1/b")

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: a.state == "open", 15, "the first tap to open")
        b_task = asyncio.create_task(b.run(stop))
        await until(lambda: b.open_failures_total >= 3, 15, "the second tap to retry")
        assert b.state == "reopening"
        assert b.last_error is not None
        assert "busy" in b.last_error
        assert "exclusively" in b.last_error
        for _ in range(50):
            device.write(b"0123456789")
        await until(lambda: len(first.data) >= 500, 15, "the first tap's bytes")
        tried = b.open_failures_total  # it keeps trying while the first one reads...
        await until(lambda: b.open_failures_total >= tried + 3, 15, "three more tries")
        assert b.status().state != "open"  # ...and never gets in
        stop.set()
        await asyncio.wait_for(b_task, 5)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(tapping(a, body))
    assert first.data == b"0123456789" * 50
    assert second.data == b""
    busy = [r for r in caplog.records if r.name == LOGGER and "busy" in r.getMessage()]
    assert len(busy) == 1


@pytest.mark.e2e
def test_the_second_tap_opens_once_the_first_lets_go(device: PtyDevice) -> None:
    got = Received()
    a = make_tap(device.path, Received(), name="lane-1/a")
    b = make_tap(device.path, got, name="lane-1/b")

    async def main() -> None:
        stop_a = asyncio.Event()
        a_task = asyncio.create_task(a.run(stop_a))
        await until(lambda: a.state == "open", 15, "the first tap to open")

        async def body(stop_b: asyncio.Event) -> None:
            await until(lambda: b.open_failures_total >= 1, 15, "the second tap's refusal")
            stop_a.set()
            await asyncio.wait_for(a_task, 5)
            await until(lambda: b.state == "open", 15, "the second tap to open")
            device.write(b"x")
            await until(lambda: got.data == b"x", 15, "bytes")

        await tapping(b, body)

    asyncio.run(main())


def test_stop_while_waiting_for_a_device_is_prompt_and_leaves_no_thread(
    tmp_path: Path,
) -> None:
    before = set(threading.enumerate())
    tap = make_tap(tmp_path / "nowhere", Received(), poll_s=4 * PROMPT_S)

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: tap.state == "waiting for device", 15, "waiting for device")

    took = asyncio.run(tapping(tap, body))
    print(f"stop while waiting took {took * 1000:.1f} ms")
    assert took < PROMPT_S
    assert tap.state == "stopped"
    assert set(threading.enumerate()) == before


@pytest.mark.e2e
def test_stop_while_reading_is_prompt_closes_the_port_and_joins_the_reader(
    device: PtyDevice,
) -> None:
    before = set(threading.enumerate())
    got = Received()
    tap = make_tap(device.path, got)

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: tap.state == "open", 15, "the port to open")
        assert len(tap_threads()) == 1
        device.write(b"last words")
        await until(lambda: got.data == b"last words", 15, "bytes")

    took = asyncio.run(tapping(tap, body))
    print(f"stop while reading took {took * 1000:.1f} ms")
    assert took < PROMPT_S
    assert tap.state == "stopped"
    assert set(threading.enumerate()) == before
    # Closed: the exclusive lock is free again.
    probe = serial.Serial(str(device.path), exclusive=True)
    probe.close()
    assert device.written == b""


@pytest.mark.e2e
def test_stop_during_a_backoff_after_unplug_is_prompt(device: PtyDevice) -> None:
    before = set(threading.enumerate())
    tap = make_tap(device.path, Received(),
                   backoff=Backoff(min_s=4 * PROMPT_S, max_s=8 * PROMPT_S))

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: tap.state == "open", 15, "the port to open")
        device.unplug()
        await until(lambda: tap.state == "reopening", 15, "the unplug to be noticed")

    took = asyncio.run(tapping(tap, body))
    assert took < PROMPT_S
    assert set(threading.enumerate()) == before


@pytest.mark.e2e
def test_a_failing_consumer_costs_no_later_bytes(device: PtyDevice) -> None:
    got = Received()

    def consumer(data: bytes, ts: float) -> None:
        got(data, ts)
        if len(got.chunks) == 1:
            raise RuntimeError("parser bug")

    tap = make_tap(device.path, consumer)

    async def body(stop: asyncio.Event) -> None:
        await until(lambda: tap.state == "open", 15, "the port to open")
        device.write(b"a")
        await until(lambda: got.data == b"a", 15, "the first byte")
        device.write(b"b")
        await until(lambda: got.data == b"ab", 15, "the byte after the failure")

    asyncio.run(tapping(tap, body))
    assert tap.status().callback_errors_total == 1


def test_open_errors_read_as_what_to_fix() -> None:
    denied = serial.SerialException(errno.EACCES, "could not open port /dev/x: Permission")
    key, text = describe_open_error("/dev/x", denied)
    assert key == "denied"
    assert "dialout" in text
    busy = serial.SerialException(
        errno.EAGAIN, "Could not exclusively lock port /dev/x: [Errno 11] Resource "
        "temporarily unavailable")
    assert describe_open_error("/dev/x", busy)[0] == "busy"
    key, text = describe_open_error("/dev/x", OSError(errno.EIO, "Input/output error"))
    assert key == f"open:{errno.EIO}"
    assert "Input/output error" in text


def test_bad_line_settings_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="parity"):
        make_tap("/dev/null", Received(), parity="X")
    with pytest.raises(ValueError, match="stop bit"):
        make_tap("/dev/null", Received(), stopbits=3)
