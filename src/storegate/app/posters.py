"""``storegate posters``: a printable check-in poster per zone (SVG, PNG or PDF).

Each poster carries the store and zone names, "Scan in the app to check in", and the
zone's signed code (core/presence/posters.py) as a large QR code with its quiet zone.
The code is signed with this gateway's poster key (``<outbox>.poster.key``, the same key
the running gateway checks with, made here if the gateway has not made it yet).

Formats, without system libraries: SVG is written directly (vector, any size); PNG is
drawn with Pillow (a qrcode dependency already) at 200 dpi; PDF is that PNG as one page
of the paper size, which Pillow writes itself (no cairo: a 200 dpi raster of black
squares prints as sharp as the printer resolves 1.5 mm modules).

Error correction Q (25 % recoverable): a poster on a wall gets creased, scuffed and
half-covered by a price tag, unlike the phone-screen QR of an offer (adapters/qr.py, M).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Final, Literal

import qrcode
import qrcode.constants
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageDraw, ImageFont

from storegate.app.checkin import load_poster_key, poster_key_path
from storegate.config import Config
from storegate.core.presence.posters import PosterSigner, VerifiedPoster, verify_poster
from storegate.core.trust import public_key_text
from storegate.errors import UsageError

Format = Literal["svg", "png", "pdf"]
PaperSize = Literal["a5", "a4"]
PAPER_MM: Final[dict[str, tuple[float, float]]] = {"a5": (148.0, 210.0), "a4": (210.0, 297.0)}
DPI: Final = 200
QUIET_MODULES: Final = 4  # the quiet zone the QR standard asks for
QR_WIDTH: Final = 0.72  # of the paper's width, quiet zone included
MARGIN: Final = 0.07  # of the paper's width
HEADLINE: Final = "Scan in the app to check in"
# A font with Cyrillic and most scripts when the system has it; Pillow's own otherwise.
SYSTEM_FONT: Final = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SYSTEM_FONT_BOLD: Final = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


@dataclass(frozen=True, slots=True)
class Poster:
    store: str  # names as printed
    zone: str
    zone_id: str
    code: str
    poster_id: str
    generation: int


def matrix(code: str) -> list[list[bool]]:
    """The QR modules of ``code``, quiet zone included (one alphanumeric segment)."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_Q,
                       border=QUIET_MODULES)
    qr.add_data(code, optimize=0)
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


def svg(poster: Poster, paper: PaperSize = "a5") -> str:
    """The poster as SVG, in millimetres: one path for the QR's dark modules."""
    width, height = PAPER_MM[paper]
    modules = matrix(poster.code)
    n = len(modules)
    side = width * QR_WIDTH
    m = side / n
    x0, y0 = (width - side) / 2, height * 0.30
    path = "".join(f"M{x0 + x * m:.3f} {y0 + y * m:.3f}h{m:.3f}v{m:.3f}h{-m:.3f}z"
                   for y, row in enumerate(modules) for x, dark in enumerate(row) if dark)

    def text(y: float, size: float, value: str, weight: str = "normal") -> str:
        return (f'<text x="{width / 2:.1f}" y="{y:.1f}" font-size="{size:.1f}" '
                f'font-weight="{weight}" text-anchor="middle">{escape(value)}</text>')

    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}mm" height="{height}mm" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif">',
        f'<title>{escape(poster.store)}: {escape(poster.zone)}</title>',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        text(height * 0.09, width * 0.055, poster.store),
        text(height * 0.18, width * 0.10, poster.zone, "bold"),
        text(height * 0.26, width * 0.05, HEADLINE),
        f'<path fill="#000" d="{path}"/>',
        text(height * 0.96, width * 0.022, f"zone {poster.zone_id} · poster "
             f"{poster.poster_id} · generation {poster.generation}"),
        "</svg>", ""])


def _font(size: int, *, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = SYSTEM_FONT_BOLD if bold else SYSTEM_FONT
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def image(poster: Poster, paper: PaperSize = "a5") -> Image.Image:
    """The poster as a 1-bit-looking greyscale image at :data:`DPI`."""
    width_mm, height_mm = PAPER_MM[paper]
    width, height = round(width_mm / 25.4 * DPI), round(height_mm / 25.4 * DPI)
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    modules = matrix(poster.code)
    n = len(modules)
    m = int(width * QR_WIDTH) // n  # whole pixels a module: every module the same size
    side = m * n
    x0, y0 = (width - side) // 2, int(height * 0.30)
    for y, row in enumerate(modules):
        for x, dark in enumerate(row):
            if dark:
                draw.rectangle((x0 + x * m, y0 + y * m, x0 + (x + 1) * m - 1,
                                y0 + (y + 1) * m - 1), fill=0)

    def text(y: float, size: float, value: str, *, bold: bool = False) -> None:
        draw.text((width / 2, y), value, fill=0, anchor="ms",
                  font=_font(int(size), bold=bold))

    text(height * 0.09, width * 0.055, poster.store)
    text(height * 0.18, width * 0.10, poster.zone, bold=True)
    text(height * 0.26, width * 0.05, HEADLINE)
    text(height * 0.96, width * 0.022, f"zone {poster.zone_id} - poster {poster.poster_id} "
         f"- generation {poster.generation}")
    return img


def render(poster: Poster, fmt: Format, paper: PaperSize = "a5") -> bytes:
    if fmt == "svg":
        return svg(poster, paper).encode()
    out = io.BytesIO()
    if fmt == "png":
        image(poster, paper).save(out, format="PNG", dpi=(DPI, DPI), optimize=True)
    else:  # one page of the paper size: Pillow sizes it from the resolution
        image(poster, paper).save(out, format="PDF", resolution=float(DPI),
                                  title=f"{poster.store}: {poster.zone}")
    return out.getvalue()


def posters(config: Config, key: Ed25519PrivateKey, *, issued_at: int,
            zones: list[str] | None = None) -> list[Poster]:
    """Signed posters of the configured zones (``zones``: only these)."""
    known = [z.id for z in config.presence.zones]
    if not known:
        raise UsageError("the config has no [[presence.zones]]: there is nothing to check "
                         "in to")
    wanted = zones or known
    unknown = [z for z in wanted if z not in known]
    if unknown:
        raise UsageError(f"--zone {unknown[0]!r} is not a zone of this store (zones: "
                         f"{', '.join(known)})")
    settings = config.checkin
    signer = PosterSigner(key, config.store_id)
    out = []
    for zone in wanted:
        code = signer.sign(zone=zone, generation=settings.generation, issued_at=issued_at)
        check = verify_poster(code, keys={signer.kid: signer.public_key},
                              store=config.store_id, zones=known,
                              min_generation=settings.min_generation, now=issued_at)
        if not isinstance(check, VerifiedPoster):  # never print one the gateway refuses
            raise UsageError(f"zone {zone!r}: the poster would be refused: {check.detail}")
        out.append(Poster(store=settings.store_name or config.store_id,
                          zone=settings.zone_names.get(zone, zone), zone_id=zone, code=code,
                          poster_id=check.poster_id, generation=settings.generation))
    return out


_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


def cmd_posters(args: argparse.Namespace, config: Config) -> int:
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: {exc.strerror}") from exc
    key = load_poster_key(config)
    made = posters(config, key, issued_at=int(time.time()), zones=args.zone or None)
    for p in made:
        path = out_dir / f"poster-{_UNSAFE.sub('_', p.zone_id)}.{args.format}"
        try:
            path.write_bytes(render(p, args.format, args.paper))
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
        print(f"{path}  zone {p.zone_id}  poster {p.poster_id}  generation {p.generation}")
    signer = PosterSigner(key, config.store_id)
    print(f"# signed with the poster key in {poster_key_path(config)}: kid {signer.kid}, "
          f"public key {public_key_text(signer.public_key)} (the store's other gateways "
          "list it in [checkin] trusted_poster_keys)", file=sys.stderr)
    if not config.checkin.enabled:
        print("# [checkin] enabled is false in this config: the gateway refuses check-ins "
              "until it is set", file=sys.stderr)
    return 0
