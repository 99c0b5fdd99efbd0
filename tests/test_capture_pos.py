"""POS capture files and receipt templates as data files: every bad line or file is
reported with its line number or key, never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from storegate.app.pos import read_template
from storegate.core.ble.capture import BadLine
from storegate.core.pos.capture import (
    MAX_CHUNK_BYTES,
    Chunk,
    chunk_to_json,
    looks_like_capture,
    read_pos_capture,
)
from storegate.core.pos.template import TemplateError

GOOD = {"ts": 1_795_000_000.5, "lane": "lane-1", "role": "printer", "dialect": "escpos",
        "data": "1b40"}
DIALECTS = ("escpos", "shtrih-m")


def line(**change: Any) -> str:
    return json.dumps({**GOOD, **change})


def test_good_chunk_round_trips() -> None:
    (c,) = list(read_pos_capture([line()], DIALECTS))
    assert c == Chunk(1_795_000_000.5, "lane-1", "printer", "escpos", b"\x1b\x40")
    assert list(read_pos_capture([chunk_to_json(c)])) == [c]


@pytest.mark.parametrize(("text", "reason"), [
    (line(ts=1e300), "ts must be epoch seconds"),
    (line(ts=-5), "ts must be epoch seconds"),
    (line().replace("1795000000.5", "NaN"), "ts must be epoch seconds"),
    (line().replace("1795000000.5", "Infinity"), "ts must be epoch seconds"),
    (line(data="zz"), "not hex"),
    (line(data="00" * (MAX_CHUNK_BYTES + 1)), "over 65536 bytes"),
    (line(lane="l" * 65), "at most 64"),
    (line(dialect="nope"), "unknown dialect 'nope'"),
    ("[" * 100_000, "not JSON"),
    ("{" + " " * 200_000 + "}", "line longer than"),
])
def test_bad_lines_are_numbered_with_a_reason(text: str, reason: str) -> None:
    out = list(read_pos_capture([line(), "", text, line()], DIALECTS))
    assert [type(x) for x in out] == [Chunk, BadLine, Chunk]
    bad = out[1]
    assert isinstance(bad, BadLine) and bad.line == 3 and reason in bad.reason


def test_sniffing_a_deeply_nested_first_line_is_not_a_crash() -> None:
    assert not looks_like_capture(b"{" + b"[" * 100_000)
    assert looks_like_capture(line().encode())


@pytest.mark.parametrize(("content", "problem"), [
    (b'name = "\xff\xfe"\n', "not UTF-8"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"a = " + b"9" * 5000 + b"\n", "4300 digits"),
    (b"name = \n", "not valid TOML"),
])
def test_a_broken_template_file_is_a_template_error(tmp_path: Path, content: bytes,
                                                    problem: str) -> None:
    f = tmp_path / "t.toml"
    f.write_bytes(content)
    with pytest.raises(TemplateError) as err:
        read_template(f)
    assert problem in err.value.problem
