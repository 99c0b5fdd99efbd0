from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
