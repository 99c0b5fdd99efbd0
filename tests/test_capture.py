"""The capture format: round trip, and every kind of bad line reported with its number."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from storegate.core.ble.capture import (
    MAX_LINE_CHARS,
    Advert,
    BadLine,
    advert_to_json,
    bounded_lines,
    read_capture,
)

GOOD = ('{"ts": 1795000000.1234, "scanner": "entrance", "address": "4A:1B:2C:3D:4E:5F", '
        '"rssi": -67, "manufacturer_data": {"76": "0215aa"}, '
        '"service_data": {"0000FEAA-0000-1000-8000-00805f9b34fb": "30ec"}, "tx_power": -8}')


def test_good_line_and_round_trip() -> None:
    (a,) = list(read_capture([GOOD]))
    assert isinstance(a, Advert)
    assert a.manufacturer_data == {76: bytes.fromhex("0215aa")}
    assert a.service_data == {"0000feaa-0000-1000-8000-00805f9b34fb": b"\x30\xec"}
    assert a.tx_power == -8
    (b,) = list(read_capture([advert_to_json(a)]))
    assert b == a


def test_bad_lines_are_numbered_and_never_fatal() -> None:
    lines = [
        GOOD,
        "{not json",
        "[1, 2]",
        '{"ts": 1795000000, "scanner": "s", "address": "a"}',
        '{"ts": "x", "scanner": "s", "address": "a", "rssi": -50}',
        '{"ts": 1795000000, "scanner": "s", "address": "a", "rssi": -500}',
        '{"ts": 1795000000, "scanner": "s", "address": "a", "rssi": -50, '
        '"manufacturer_data": {"apple": "00"}}',
        '{"ts": 1795000000, "scanner": "s", "address": "a", "rssi": -50, '
        '"service_data": {"u": "zz"}}',
        "",
        GOOD,
    ]
    out = list(read_capture(lines))
    assert [type(x) for x in out] == [Advert] + [BadLine] * 7 + [Advert]
    bad = [x for x in out if isinstance(x, BadLine)]
    assert [b.line for b in bad] == [2, 3, 4, 5, 6, 7, 8]
    assert "not JSON" in bad[0].reason
    assert "missing key 'rssi'" in bad[2].reason
    assert "company id" in bad[5].reason
    assert "not hex" in bad[6].reason


def _line(**change: Any) -> str:
    obj = {**json.loads(GOOD), **change}
    return json.dumps({k: v for k, v in obj.items() if v is not None})


@pytest.mark.parametrize(("change", "reason"), [
    ({"ts": 1e300}, "ts must be epoch seconds"),  # replay once hung on this
    ({"ts": -1e20}, "ts must be epoch seconds"),
    ({"ts": 12.5}, "ts must be epoch seconds"),  # an ESP32 that rebooted to 1970
    ({"ts": 4_200_000_000}, "ts must be epoch seconds"),
    ({"ts": True}, "ts must be epoch seconds"),
    ({"rssi": 21}, "rssi"), ({"rssi": -128}, "rssi"),
    ({"tx_power": 1000}, "tx_power"),
    ({"name": "n" * 249}, "name"),
    ({"manufacturer_data": {"76": "00" * 256}}, "255 bytes"),
    ({"manufacturer_data": {str(i): "00" for i in range(33)}}, "more than 32"),
    ({"service_uuids": ["u"] * 33}, "service_uuids"),
    ({"scanner": "s" * 65}, "scanner"),
])
def test_out_of_bounds_values_are_bad_lines_with_a_reason(
        change: dict[str, Any], reason: str) -> None:
    (bad,) = list(read_capture(["", _line(**change)]))
    assert isinstance(bad, BadLine)
    assert bad.line == 2 and reason in bad.reason


def test_non_finite_numbers_are_bad_lines() -> None:
    # json reads NaN and Infinity, which no comparison with a bound rejects by itself
    for text in ('"ts": NaN', '"ts": Infinity', '"ts": -Infinity'):
        line = GOOD.replace('"ts": 1795000000.1234', text)
        (bad,) = list(read_capture([line]))
        assert isinstance(bad, BadLine) and "ts must be epoch seconds" in bad.reason


def test_a_huge_line_is_reported_without_being_read_whole() -> None:
    text = GOOD + "\n" + '{"ts": ' + "1" * (50 * MAX_LINE_CHARS) + "}\n" + GOOD + "\n"
    f = io.StringIO(text)
    longest = 0

    def readline(limit: int) -> str:
        nonlocal longest
        line = f.readline(limit)
        longest = max(longest, len(line))
        return line

    out = list(read_capture(bounded_lines(readline, MAX_LINE_CHARS)))
    assert [type(x) for x in out] == [Advert, BadLine, Advert]
    assert out[1] == BadLine(2, f"line longer than {MAX_LINE_CHARS} characters")
    assert longest <= MAX_LINE_CHARS + 1
