from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
