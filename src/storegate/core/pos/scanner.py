"""Serial barcode scanner tap: ``[prefix][AIM id][data][suffix]`` in, codes out.

The suffix (CR, LF, CRLF or TAB) ends a code; a configured prefix and an AIM
symbology identifier (``]`` + two characters, e.g. ``]Q1`` for QR, ``]E0`` for EAN-13)
are stripped. A code without its suffix after ``idle_s`` is dropped and counted. Pure.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from storegate.core.pos.frames import Frame, Rejections, Scanned

Suffix = Literal["CR", "LF", "CRLF", "TAB"]
SUFFIXES: Final[dict[str, bytes]] = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "TAB": b"\t"}
MAX_CODE: Final = 4096
_AIM: Final = re.compile(r"^\][A-Za-z][0-9A-Za-z]")


class BarcodeScanner:
    name = "scanner"

    def __init__(self, *, prefix: bytes = b"", suffix: Suffix = "CR", encoding: str = "utf-8",
                 idle_s: float = 0.5) -> None:
        self.prefix = prefix
        self.suffix = SUFFIXES[suffix]
        self.encoding = encoding
        self.idle_s = idle_s
        self.rejected: dict[str, int] = {}
        self._reject = Rejections(self.rejected)
        self._buf = b""
        self._last = float("-inf")

    def feed(self, data: bytes, now: float) -> list[Frame]:
        out = self.flush(now)
        if not data:
            return out
        self._last = now
        buf = self._buf + data
        parts = buf.split(self.suffix)
        self._buf = parts.pop()
        if len(self._buf) > MAX_CODE:
            self._reject("too-long")
            self._buf = b""
        for part in parts:
            code = part.strip(b"\r\n")  # a stray CR or LF around a code is not part of it
            if not code:
                continue
            if self.prefix:
                if not code.startswith(self.prefix):
                    self._reject("no-prefix")
                    continue
                code = code[len(self.prefix):]
            try:
                text = code.decode(self.encoding)
            except UnicodeDecodeError:
                self._reject("bad-encoding")
                continue
            aim = None
            if _AIM.match(text):
                aim, text = text[1:3], text[3:]
            if not text or any(ord(c) < 0x20 for c in text):
                self._reject("not-a-code")
                continue
            out.append(Scanned(text, now, aim))
        return out

    def flush(self, now: float) -> list[Frame]:
        if self._buf and now - self._last >= self.idle_s:
            self._reject("no-suffix")
            self._buf = b""
        return []
