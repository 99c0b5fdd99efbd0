"""Shared fixtures, and the rule that keeps ``scripts/test -m "not e2e"`` fast.

A test that starts a process (mosquitto, the gateway, dbus-daemon, ``mount``), opens a
pty or connects a socket is end-to-end: its module says ``pytestmark = pytest.mark.e2e``
(or the test carries ``@pytest.mark.e2e``). Every other test is a unit test, and
``_unit_tests_stay_in_process`` makes it fail at once if it tries any of those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.bluez import BluezMock
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber


@pytest.fixture(scope="session")
def broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the session; tests that break it use their own ``broker``."""
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.kill()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test's own, free to kill and restart."""
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.kill()


@pytest.fixture
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    s = Subscriber(broker.port)
    yield s
    s.close()


@pytest.fixture
def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BluezMock]:
    """A mocked bluetoothd (adapters hci0, hci1) on a private system bus, for real bleak."""
    with BluezMock.running(tmp_path / "bluez", adapters=("hci0", "hci1")) as mock:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", mock.address)
        yield mock


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(request: pytest.FixtureRequest,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("e2e") is not None:
        return

    def refuse(what: str) -> Callable[..., NoReturn]:
        def refused(*_args: Any, **_kwargs: Any) -> NoReturn:
            raise AssertionError(f"{request.node.nodeid} {what}: mark it pytest.mark.e2e")
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a process"))
    monkeypatch.setattr(os, "fork", refuse("forks a process"))
    monkeypatch.setattr(os, "openpty", refuse("opens a pty"))
    monkeypatch.setattr(pty, "openpty", refuse("opens a pty"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connects a socket"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connects a socket"))


# --- what a test leaves behind: logging state, threads, processes ------------------------

_LOGGERS = ("", "storegate")  # the root logger and the package's


def _children() -> dict[int, str]:
    """This process's live children (not zombies): pid -> command name."""
    me, out = os.getpid(), {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm, _, rest = stat.partition(b" (")[2].rpartition(b")")
        fields = rest.split()
        if len(fields) > 1 and int(fields[1]) == me and fields[0] not in (b"Z", b"X"):
            out[int(name)] = comm.decode(errors="replace")
    return out


_LEAKS: dict[str, list[str]] = {"threads": [], "processes": []}
_started_by: dict[int, str] = {}  # child pid -> the test during which it was first seen
_threads_by: dict[threading.Thread, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, None, None]:
    """Around the whole test (setup, call, teardown; outside pytest's per-phase log
    capture): the root and ``storegate`` loggers get back the handlers and levels they
    had. ``cli.main`` (``logs.setup``) points the root logger at the test's captured
    stderr, closed after the test: a thread still logging there later wrote "--- Logging
    error --- ValueError: I/O operation on closed file" into other tests' output.
    Also notes the threads and child processes that outlive each test."""
    saved = [(lg, lg.handlers[:], lg.level) for lg in map(logging.getLogger, _LOGGERS)]
    before = set(threading.enumerate())
    try:
        yield
    finally:
        for lg, handlers, level in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
        for t in set(threading.enumerate()) - before:
            _threads_by.setdefault(t, item.nodeid)
        if item.get_closest_marker("e2e") is not None:  # unit tests cannot start any
            for pid in _children():
                _started_by.setdefault(pid, item.nodeid)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    # innermost: after the session fixtures' teardown (broker_session, ...), before the
    # terminal summary
    yield
    for t, nodeid in _threads_by.items():
        # AnyIO's idle worker pool (Starlette's TestClient) lives on by design
        if t.is_alive() and not t.name.startswith("AnyIO worker thread"):
            _LEAKS["threads"].append(f"{t.name} (daemon={t.daemon}) from {nodeid}")
    for pid, comm in _children().items():
        _LEAKS["processes"].append(f"pid {pid} {comm} from {_started_by.get(pid, '?')}")
        with contextlib.suppress(OSError):  # never leave a broker or gateway behind
            os.kill(pid, signal.SIGKILL)
    if _LEAKS["processes"] and os.environ.get("SG_TEST_LEAKS") == "fail":
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Listed loudly at the end: a process or thread a test left running (the process
    was killed here; SG_TEST_LEAKS=fail fails the run for it)."""
    for kind, leaks in _LEAKS.items():
        if leaks:
            terminalreporter.section(f"LEAKED {kind.upper()} ({len(leaks)})", red=True)
            for line in leaks:
                terminalreporter.line(line)
