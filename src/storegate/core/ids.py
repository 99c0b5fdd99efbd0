"""Event ids: UUIDv7 (RFC 9562), sortable by creation time and unique without coordination.

Pure: the caller passes the time and the random bytes, so tests and replays are exact.
Within one millisecond the 12-bit ``rand_a`` field is a counter (RFC 9562 §6.2,
method 1), so ids from one generator sort in the order they were made.
"""

from __future__ import annotations

from typing import Final

UUID7_RANDOM_BYTES: Final = 8
_COUNTER_MAX: Final = 0xFFF


def format_uuid(value: int) -> str:
    """The canonical 8-4-4-4-12 lowercase form of a 128-bit integer."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7(unix_ms: int, counter: int, rand: bytes) -> str:
    """Build a UUIDv7 from a millisecond timestamp, a 12-bit counter and 8 random bytes."""
    if not 0 <= unix_ms < 1 << 48:
        raise ValueError(f"unix_ms out of range: {unix_ms}")
    if not 0 <= counter <= _COUNTER_MAX:
        raise ValueError(f"counter out of range: {counter}")
    if len(rand) != UUID7_RANDOM_BYTES:
        raise ValueError(f"need {UUID7_RANDOM_BYTES} random bytes, got {len(rand)}")
    rand_b = int.from_bytes(rand, "big") & ((1 << 62) - 1)
    value = (unix_ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return format_uuid(value)


class Uuid7Generator:
    """Monotonic UUIDv7s: later calls never sort before earlier ones, even if the clock
    steps back (the last timestamp is kept until the clock passes it)."""

    __slots__ = ("_counter", "_last_ms")

    def __init__(self) -> None:
        self._last_ms = -1
        self._counter = 0

    def next(self, unix_ms: int, rand: bytes) -> str:
        if unix_ms > self._last_ms:
            self._last_ms = unix_ms
            self._counter = 0
        else:
            self._counter += 1
            if self._counter > _COUNTER_MAX:  # 4096 ids in one ms: borrow the next ms
                self._last_ms += 1
                self._counter = 0
        return uuid7(self._last_ms, self._counter, rand)
