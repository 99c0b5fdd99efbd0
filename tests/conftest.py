"""Shared fixtures, and the rule that keeps ``scripts/test -m "not e2e"`` fast.

A test that starts a process (mosquitto, the gateway, dbus-daemon, ``mount``), opens a
pty or connects a socket is end-to-end: its module says ``pytestmark = pytest.mark.e2e``
(or the test carries ``@pytest.mark.e2e``). Every other test is a unit test, and
``_unit_tests_stay_in_process`` makes it fail at once if it tries any of those.
"""

from __future__ import annotations

import os
import pty
import socket
import subprocess
from collections.abc import Callable, Iterator
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
