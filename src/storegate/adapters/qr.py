"""An offer token as a QR code (PNG or SVG) for the customer's phone screen.

Error correction level M (15 % of the symbol recoverable). Level Q or H exist for print
that gets creased, dirty or torn; a phone screen does not, and its failures are
resolution and focus: at a fixed size on the screen, fewer modules mean larger ones.
The 186-character token (QR alphanumeric mode) is version 6 (41x41 modules) at L,
8 (49x49) at M, 9 (53x53) at Q, 11 (61x61) at H. M keeps the symbol small and still
reads through a glare spot or a cracked screen; L leaves no margin for either.
"""

from __future__ import annotations

import io
from typing import Final

import qrcode
import qrcode.constants
from qrcode.image.pil import PilImage
from qrcode.image.svg import SvgPathImage

ERROR_CORRECTION: Final = qrcode.constants.ERROR_CORRECT_M
BORDER_MODULES: Final = 4  # the quiet zone the QR standard asks for
DEFAULT_MODULE_PX: Final = 8  # a 57-module symbol with its border: 456 px square


def code(text: str) -> qrcode.QRCode:  # type: ignore[type-arg]
    """The QR symbol of ``text``, its version fitted to the data."""
    qr = qrcode.QRCode(error_correction=ERROR_CORRECTION, border=BORDER_MODULES)
    qr.add_data(text, optimize=0)  # one segment: the token is all alphanumeric
    qr.make(fit=True)
    return qr


def png(text: str, *, module_px: int = DEFAULT_MODULE_PX) -> bytes:
    qr = code(text)
    qr.box_size = module_px
    out = io.BytesIO()
    qr.make_image(image_factory=PilImage).save(out, format="PNG")
    return out.getvalue()


def svg(text: str) -> str:
    """A scalable SVG (one path; sized in mm by qrcode, scale it freely)."""
    qr = code(text)
    image = qr.make_image(image_factory=SvgPathImage)
    return image.to_string(encoding="unicode")
