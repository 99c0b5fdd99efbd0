"""``storegate posters``: a printable poster per zone whose QR code reads back (zxing-cpp)
as a code the gateway accepts; SVG well-formed, PDF one page."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import zxingcpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from storegate.adapters.gateway_key import load_or_create_poster_key
from storegate.app.checkin import poster_key_path
from storegate.app.cli import main
from storegate.app.posters import Poster, matrix, render
from storegate.config import load
from storegate.core.presence.posters import PosterSigner, VerifiedPoster, verify_poster

NOW = 1_795_000_000


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "store.toml"
    path.write_text(f"""
store_id = "s1"
gateway_id = "g1"
[storage]
path = "{tmp_path / 'data' / 'outbox.db'}"
[[presence.zones]]
id = "entrance"
scanners = ["se"]
[[presence.zones]]
id = "dairy"
scanners = ["sd"]
[checkin]
enabled = true
generation = 3
min_generation = 2
store_name = "Store Forty-Two"
zone_names = {{ dairy = "Dairy & Eggs" }}
""")
    return path


def verify(tmp_path: Path, cfg: Path, code: str) -> VerifiedPoster:
    config = load(cfg)
    signer = PosterSigner(load_or_create_poster_key(poster_key_path(config)), "s1")
    result = verify_poster(code, keys={signer.kid: signer.public_key}, store="s1",
                           zones=("entrance", "dairy"), min_generation=2, now=2**32)
    assert isinstance(result, VerifiedPoster), result
    return result


def test_png_posters_read_back_as_codes_the_gateway_accepts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    out = tmp_path / "posters"
    assert main(["posters", "-c", str(cfg), "--format", "png", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["poster-dairy.png",
                                                     "poster-entrance.png"]
    assert poster_key_path(load(cfg)).exists()  # made on first use, as the gateway does
    printed = capsys.readouterr()
    assert "poster-dairy.png  zone dairy" in printed.out
    assert "kid " in printed.err and "trusted_poster_keys" in printed.err
    for zone in ("dairy", "entrance"):
        img = Image.open(out / f"poster-{zone}.png")
        assert img.size == (1165, 1654)  # A5 at 200 dpi
        found = zxingcpp.read_barcodes(img)
        assert len(found) == 1 and found[0].format == zxingcpp.BarcodeFormat.QRCode
        poster = verify(tmp_path, cfg, found[0].text)
        assert (poster.zone, poster.generation) == (zone, 3)
        assert poster.poster_id in printed.out


def test_svg_is_well_formed_and_names_store_and_zone(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = tmp_path / "posters"
    assert main(["posters", "-c", str(cfg), "--zone", "dairy", "--format", "svg",
                 "--out", str(out), "--paper", "a4"]) == 0
    assert [p.name for p in out.iterdir()] == ["poster-dairy.svg"]
    root = ET.parse(out / "poster-dairy.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and root.get("width") == "210.0mm"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert texts[:3] == ["Store Forty-Two", "Dairy & Eggs", "Scan in the app to check in"]
    path = root.find(f"{ns}path")
    assert path is not None and path.get("d", "").count("z") > 500  # the dark modules


def test_pdf_is_one_page_of_a5(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = tmp_path / "posters"
    assert main(["posters", "-c", str(cfg), "--zone", "entrance", "--out", str(out)]) == 0
    data = (out / "poster-entrance.pdf").read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 1
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert box is not None  # A5 in points: 419.5 x 595.3
    assert abs(float(box.group(1)) - 419.5) < 1 and abs(float(box.group(2)) - 595.3) < 1


def test_an_unknown_zone_is_a_usage_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert main(["posters", "-c", str(cfg), "--zone", "bakery", "--out",
                 str(tmp_path / "p")]) == 2
    assert "bakery" in capsys.readouterr().err


def test_the_quiet_zone_and_error_correction_survive_rendering() -> None:
    code = PosterSigner(Ed25519PrivateKey.generate(), "s1").sign(zone="dairy", generation=1,
                                                                 issued_at=NOW)
    modules = matrix(code)
    assert all(not any(row) for row in modules[:4] + modules[-4:])  # 4 light rows each side
    assert all(not any(row[:4]) and not any(row[-4:]) for row in modules)
    poster = Poster(store="S", zone="Dairy", zone_id="dairy", code=code, poster_id="x",
                    generation=1)
    img = Image.open(io.BytesIO(render(poster, "png")))
    # a price tag over a corner of the code (a few % of its area): still reads (level Q)
    w, h = img.size
    side = int(w * 0.72)
    x0, y0 = (w - side) // 2, int(h * 0.30)
    img.paste(255, (x0 + side // 2, y0 + side - side // 6, x0 + side // 2 + side // 8,
                    y0 + side - side // 12))
    assert [r.text for r in zxingcpp.read_barcodes(img)] == [code]
