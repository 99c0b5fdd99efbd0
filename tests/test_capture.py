"""The capture format: round trip, and every kind of bad line reported with its number."""

from __future__ import annotations

from storegate.core.ble.capture import Advert, BadLine, advert_to_json, read_capture

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
        '{"ts": 1, "scanner": "s", "address": "a"}',
        '{"ts": "x", "scanner": "s", "address": "a", "rssi": -50}',
        '{"ts": 1, "scanner": "s", "address": "a", "rssi": -500}',
        '{"ts": 1, "scanner": "s", "address": "a", "rssi": -50, '
        '"manufacturer_data": {"apple": "00"}}',
        '{"ts": 1, "scanner": "s", "address": "a", "rssi": -50, "service_data": {"u": "zz"}}',
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
