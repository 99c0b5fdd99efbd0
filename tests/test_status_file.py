"""The live status file, directly: written atomically and owner-only, read forgivingly
(``storegate status`` covers it end to end through a running gateway)."""

from __future__ import annotations

import datetime
import errno
import json
import os
import resource
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from storegate.adapters import status_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != name)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_what_is_written_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db.status.json"
    status = {"pid": 42, "publisher": {"state": "connected", "acked_total": 7},
              "lanes": [{"name": "till-1", "bytes_total": 0}], "last_error": None}
    status_file.write(path, status)
    assert status_file.read(path) == status
    assert leftovers(tmp_path, path.name) == []  # no temp file left beside it


def test_values_json_cannot_hold_are_written_as_text(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    status_file.write(path, {"storage": tmp_path / "outbox.db", "since": when})
    assert status_file.read(path) == {"storage": str(tmp_path / "outbox.db"),
                                      "since": str(when)}


def test_the_file_is_owner_only_whatever_the_umask(tmp_path: Path,
                                                   permissive_umask: None) -> None:
    path = tmp_path / "status.json"
    status_file.write(path, {"n": 1})
    assert mode(path) == status_file.FILE_MODE == 0o600


def test_an_older_readable_file_or_stale_temp_file_does_not_widen_it(
        tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "status.json"
    path.write_text("{}")
    path.chmod(0o644)  # written by an older version
    stale = tmp_path / f".{path.name}.{os.getpid()}.tmp"
    stale.write_text("half a file")
    stale.chmod(0o666)  # left by a crash, under the name this process will use
    status_file.write(path, {"n": 2})
    assert mode(path) == 0o600
    assert status_file.read(path) == {"n": 2}
    assert leftovers(tmp_path, path.name) == []


def test_a_reader_never_sees_a_torn_file(tmp_path: Path) -> None:
    """Large enough that a write in place would be seen half done (several syscalls)."""
    path = tmp_path / "status.json"
    versions = [{"version": v, "lanes": [{"name": f"lane-{i}", "pad": "x" * 200}
                                         for i in range(2000)]} for v in range(2)]
    status_file.write(path, versions[0])
    stop = threading.Event()
    seen: list[int] = []
    torn: list[object] = []

    def reader() -> None:
        while not stop.is_set():
            got = status_file.read(path)
            if got is None or got not in versions:
                torn.append(got if got is None else got.get("version"))
            else:
                seen.append(got["version"])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for n in range(60):
            status_file.write(path, versions[n % 2])
    finally:
        stop.set()
        t.join()
    assert torn == []
    assert seen  # the reader had its chance


@pytest.mark.parametrize("content", [
    b"",  # created, nothing written yet
    b'{"pid": 42, "publisher": {"state": "conn',  # a torn write (an older version's)
    b"{not json}",
    b"\xff\xfe\x00garbage",  # not UTF-8
    b"[1, 2, 3]",  # JSON, but not a status
    b'"connected"',
    b"null",
], ids=["empty", "truncated", "not-json", "not-utf8", "a-list", "a-string", "null"])
def test_an_unreadable_status_reads_as_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(content)
    assert status_file.read(path) is None


def test_a_missing_or_inaccessible_status_reads_as_none(tmp_path: Path) -> None:
    assert status_file.read(tmp_path / "none.json") is None
    assert status_file.read(tmp_path) is None  # a directory where the file should be
    assert status_file.read(tmp_path / "not-a-dir" / "x.json") is None


def test_a_failed_write_leaves_the_last_status_and_no_temp_file(tmp_path: Path) -> None:
    """A full disk, reproduced in-process: a file size limit makes write() fail (EFBIG)."""
    path = tmp_path / "status.json"
    status_file.write(path, {"n": 1})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as failed:
            status_file.write(path, {"pad": "x" * 100_000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert failed.value.errno == errno.EFBIG
    assert status_file.read(path) == {"n": 1}
    assert leftovers(tmp_path, path.name) == []


def test_writing_into_a_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        status_file.write(tmp_path / "gone" / "status.json", {"n": 1})


def test_remove_deletes_and_tolerates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    status_file.write(path, {"n": 1})
    status_file.remove(path)
    assert not path.exists()
    status_file.remove(path)  # already gone: a second stop must not fail
    assert status_file.read(path) is None


def test_process_alive() -> None:
    assert status_file.process_alive(os.getpid())
    # pid 1 always exists: alive whether we may signal it (root) or not (PermissionError)
    assert status_file.process_alive(1)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert not status_file.process_alive(pid_max + 1)  # no such process can exist


def test_written_json_is_what_json_reads(tmp_path: Path) -> None:
    """Another process (``storegate status``, an operator's jq) reads it as plain JSON."""
    path = tmp_path / "status.json"
    status_file.write(path, {"a": [1, 2], "b": {"c": "d"}})
    assert json.loads(path.read_bytes()) == {"a": [1, 2], "b": {"c": "d"}}
