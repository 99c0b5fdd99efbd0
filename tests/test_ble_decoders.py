"""BLE decoders: byte vectors for every frame, the edge cases peers get wrong, and
arbitrary bytes (property-based) that must never raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storegate.core.ble.decoders import (
    APPLE,
    EDDYSTONE_UUID,
    AltBeacon,
    EddystoneEid,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    IBeacon,
    decode_advert,
    decode_altbeacon,
    decode_eddystone,
    decode_ibeacon,
)

UUID = bytes.fromhex("f7826da64fa24e988024bc5b71e0893e")
IBEACON = bytes.fromhex("0215") + UUID + bytes.fromhex("9c40" "fffe" "c5")


def test_ibeacon_vector_with_unsigned_major_minor() -> None:
    f = decode_ibeacon(IBEACON)
    assert f == IBeacon("f7826da6-4fa2-4e98-8024-bc5b71e0893e", 40000, 65534, -59)


@pytest.mark.parametrize("data", [
    IBEACON[:-1],                         # truncated
    bytes.fromhex("0216") + IBEACON[2:],  # wrong length byte
    bytes.fromhex("0315") + IBEACON[2:],  # not the iBeacon type
    b"",
])
def test_ibeacon_rejects(data: bytes) -> None:
    assert decode_ibeacon(data) is None


def test_ibeacon_followed_by_another_apple_record() -> None:
    assert decode_ibeacon(IBEACON + bytes.fromhex("1005031c")) == decode_ibeacon(IBEACON)


ALT = bytes.fromhex("beac") + UUID + bytes.fromhex("0001" "0002") + bytes.fromhex("c400")


def test_altbeacon_under_any_company_id() -> None:
    for company in (0x0118, 0xFFFF, APPLE):
        f = decode_altbeacon(company, ALT)
        assert f == AltBeacon(company, UUID.hex() + "00010002", -60, 0)
    # the BEAC code is payload, not a company id: 0xBEAC as company id means nothing
    assert decode_altbeacon(0xBEAC, UUID + bytes(8)) is None
    assert decode_altbeacon(0x0118, ALT[:-1]) is None
    assert decode_altbeacon(0x0118, ALT + b"\0") is None


def test_eddystone_uid_with_and_without_reserved_bytes() -> None:
    base = bytes.fromhex("00" "ee" "00112233445566778899" "aabbccddeeff")
    f = decode_eddystone(base)
    assert f == EddystoneUid("00112233445566778899", "aabbccddeeff", -18)
    assert isinstance(f, EddystoneUid) and f.power_1m == -59
    assert decode_eddystone(base + b"\0\0") == f
    assert decode_eddystone(base[:-1]) is None
    assert decode_eddystone(base + b"\0") is None


@pytest.mark.parametrize(("hexdata", "url"), [
    ("10f8" "03" "676f6f676c65" "07", "https://google.com"),
    ("10f8" "00" "6578616d706c65" "00" "78", "http://www.example.com/x"),
    ("10f8" "02" "73746f7265" "0d", "http://store.gov"),
])
def test_eddystone_url(hexdata: str, url: str) -> None:
    f = decode_eddystone(bytes.fromhex(hexdata))
    assert f == EddystoneUrl(url, -8)


@pytest.mark.parametrize(
    "hexdata", ["10f804616263", "10f80361200a", "10f803", "10f803" + "61" * 18]
)
def test_eddystone_url_rejects(hexdata: str) -> None:
    assert decode_eddystone(bytes.fromhex(hexdata)) is None


def test_eddystone_tlm() -> None:
    data = bytes.fromhex("2000" "0bb8" "1980" "00000064" "00002710")
    assert decode_eddystone(data) == EddystoneTlm(3000, 25.5, 100, 1000.0)
    neg = bytes.fromhex("2000" "0000" "fe80" "00000001" "00000001")
    f = decode_eddystone(neg)
    assert isinstance(f, EddystoneTlm) and f.temperature_c == -1.5
    unsupported = bytes.fromhex("2000" "0bb8" "8000" "00000064" "00002710")
    f = decode_eddystone(unsupported)
    assert isinstance(f, EddystoneTlm) and f.temperature_c is None
    assert decode_eddystone(bytes.fromhex("2001") + bytes(12)) is None  # encrypted TLM
    assert decode_eddystone(data[:-1]) is None


def test_eddystone_eid() -> None:
    f = decode_eddystone(bytes.fromhex("30" "ec" "a9b76a71c5f89290"))
    assert f == EddystoneEid(bytes.fromhex("a9b76a71c5f89290"), -20)
    assert decode_eddystone(bytes.fromhex("30ec" "a9b76a71c5f892")) is None


def test_advert_with_stale_extra_manufacturer_keys() -> None:
    frames = decode_advert(
        {0x0059: b"\x01\x02\x03", APPLE: IBEACON, 0x0118: b"junk"},
        {EDDYSTONE_UUID: bytes.fromhex("30ec" "a9b76a71c5f89290"),
         "0000fe9f-0000-1000-8000-00805f9b34fb": b"\x00"},
    )
    eid = decode_eddystone(bytes.fromhex("30eca9b76a71c5f89290"))
    assert frames == [decode_ibeacon(IBEACON), eid]


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 0xFFFF))
def test_decoders_never_raise_on_arbitrary_bytes(data: bytes, company: int) -> None:
    for frame in (decode_ibeacon(data), decode_altbeacon(company, data), decode_eddystone(data)):
        assert frame is None or isinstance(frame, IBeacon | AltBeacon | EddystoneUid |
                                           EddystoneUrl | EddystoneTlm | EddystoneEid)
    decode_advert({company: data}, {EDDYSTONE_UUID: data})


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=21, max_size=21))
def test_any_well_framed_ibeacon_decodes_and_roundtrips(body: bytes) -> None:
    f = decode_ibeacon(b"\x02\x15" + body)
    assert f is not None
    assert 0 <= f.major <= 0xFFFF and 0 <= f.minor <= 0xFFFF
    assert f.major == int.from_bytes(body[16:18], "big")
