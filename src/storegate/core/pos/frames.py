"""What the lane dialects produce: typed frames, in lane time order.

Every dialect is an incremental parser (see :class:`Dialect`): bytes in as they arrive,
with the time they arrived, frames out as soon as they are complete. Nothing here does
I/O or reads a clock; a dialect never raises on any input, it counts what it rejects
(``rejected``: reason -> count) and resynchronises on the next start of a frame.

Money is integer minor units (kopecks, cents); quantities are thousandths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

TenderKind = Literal["cash", "card", "voucher", "other"]


@dataclass(frozen=True, slots=True)
class ReceiptText:
    """One printed job (escpos), or the text frames of one job (stx-etx): its lines in
    print order, the contents of native QR codes, whether a cut ended it."""

    lines: tuple[str, ...]
    at: float  # arrival of the job's last byte
    qr: tuple[str, ...] = ()
    barcodes: tuple[str, ...] = ()
    cut: bool = False
    started_at: float | None = None  # arrival of its first byte


@dataclass(frozen=True, slots=True)
class JobStarted:
    """The first byte of a printer job arrived: the till has closed the sale it prints
    (what is scanned from now on belongs to the next customer)."""

    at: float


@dataclass(frozen=True, slots=True)
class DisplayUpdate:
    """The customer display after an update: its two lines (pole-display)."""

    upper: str
    lower: str
    at: float


@dataclass(frozen=True, slots=True)
class Scanned:
    """A code read by the lane's barcode scanner, prefix, suffix and AIM id removed."""

    code: str
    at: float
    aim: str | None = None  # e.g. "Q1" (QR), "E0" (EAN-13)


@dataclass(frozen=True, slots=True)
class FiscalItem:
    """An item registered on the fiscal register (sale, or return when ``is_return``)."""

    name: str
    quantity_milli: int
    price_minor: int
    at: float
    department: int = 0
    is_return: bool = False
    command: int = 0  # the register's command code, for matching an error reply
    amount_minor: int | None = None  # the line's sum when the command carries it (else
    # price x quantity, rounded half up, as registers compute it)


@dataclass(frozen=True, slots=True)
class FiscalDiscount:
    amount_minor: int  # positive: discount; negative: surcharge
    at: float
    command: int = 0


@dataclass(frozen=True, slots=True)
class FiscalClose:
    """The receipt closed: what was tendered, the receipt-level discount."""

    tenders: tuple[tuple[TenderKind, int], ...]
    at: float
    discount_minor: int = 0
    text: str = ""
    command: int = 0
    discount_percent_centi: int = 0  # a receipt discount in 0.01 % (Shtrih-M 0x85)
    rest: TenderKind | None = None  # this tender covers what the others leave of the
    # total (ATOL 0x4A with a sum of 0: "the sum of the receipt")


@dataclass(frozen=True, slots=True)
class FiscalCancel:
    at: float
    command: int = 0


@dataclass(frozen=True, slots=True)
class FiscalRejected:
    """The register answered a command with an error: that operation did not happen."""

    command: int
    error: int
    at: float


Frame = (ReceiptText | JobStarted | DisplayUpdate | Scanned | FiscalItem | FiscalDiscount
         | FiscalClose | FiscalCancel | FiscalRejected)


class Dialect(Protocol):
    """An incremental, pure parser of one device's byte stream."""

    name: str
    rejected: dict[str, int]  # reason -> count, since creation

    def feed(self, data: bytes, now: float) -> list[Frame]:
        """Bytes as they arrived at ``now``; the frames they completed."""
        ...

    def flush(self, now: float) -> list[Frame]:
        """Time passed without bytes: end what an idle gap ends (a job without a cut,
        a partial frame past its per-byte timeout). Call about every 100 ms."""
        ...


@dataclass(slots=True)
class Rejections:
    """Counting helper for dialects: reason -> count."""

    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, reason: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
