"""A real small filesystem for tests (needs root, as CI has): full disks, read-only mounts."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False) -> Iterator[Path]:
    path.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last block with a ballast file; delete it to free the space."""
    ballast = disk / "ballast"
    with ballast.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    with ballast.open("ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:  # the last partial block
            f.write(b"\0")
    return ballast
