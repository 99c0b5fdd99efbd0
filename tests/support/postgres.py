"""A throwaway PostgreSQL cluster on a free loopback port (Debian's ``postgresql``).

PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
user (``runuser``); its directory is a fresh temporary one, removed at the end. Use
the ``postgres_url`` fixture of a test module (``from tests.support.postgres import
postgres_url``): one cluster per module, a fresh database per test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import free_port

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_bin(name: str) -> str:
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: apt-get install postgresql")
    return found


class Postgres:
    """One cluster: ``start``, ``url(db)``, ``create_database``, ``stop``."""

    def __init__(self, *, fsync: bool = False) -> None:
        """``fsync`` off for tests (a throwaway cluster); on for a benchmark that
        compares with SQLite at synchronous=FULL."""
        self.fsync = fsync
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sg-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else os.environ.get("USER", "postgres")

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else list(cmd)
        return subprocess.run(full, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        r = self._run(pg_bin("initdb"), "-D", str(self.data), "-U", self.user,
                      "--auth=trust", "-E", "UTF8", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=50 "
                # dynamic shared memory in files under the data directory, not
                # /dev/shm: a host that removes a user's IPC when its last session
                # ends (logind RemoveIPC) took the segments away mid-test
                "-c dynamic_shared_memory_type=mmap")
        r = self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-t", "60",
                      "-l", str(self.root / "log"), "start")
        if r.returncode:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr} {log}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                      "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Postgres) -> str:
    """A fresh, empty database on the module's throwaway cluster."""
    return postgres_cluster.create_database()
