"""The publisher's short-PUBACK path (``_decode_pubacks_fast``) hands paho's bookkeeping
exactly what paho's own handler does, and leaves every other PUBACK to paho."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from storegate.adapters.mqtt_paho import _decode_pubacks_fast

PUBACKS = [
    b"\x00\x01",  # success, the short form
    b"\x00\x01\x00",  # success with its reason code
    b"\x00\x01\x10",  # no matching subscribers (mosquitto's usual answer)
    b"\x00\x01\x87",  # not authorised: a refusal
    b"\x00\x01\x87\x05\x1f\x00\x02no",  # with a reason string: paho's path
    b"\x00\x01\x00\x00",  # with an empty property length: paho's path
    b"\x00\x02\x00",  # a message id not in flight
    b"\x00\x01\x01",  # a code no PUBACK carries: paho's path (malformed)
    b"\x00",  # too short: paho's path (malformed)
]


def _acked(protocol: MQTTProtocolVersion, packet: bytes, fast: bool) -> Any:
    """Publish one message (offline: paho keeps it), feed ``packet`` as its PUBACK, and
    say what on_publish saw and what paho still holds."""
    seen: list[tuple[Any, ...]] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol)
    client.on_publish = lambda _c, _u, mid, reason, props: seen.append(
        (mid, reason.value, reason.is_failure, str(reason), props.json() if props else None))
    if fast:
        _decode_pubacks_fast(client)
    client.publish("t", b"x", qos=1)
    client._in_packet["command"] = 0x40
    client._in_packet["packet"] = bytearray(packet)
    try:
        rc = client._handle_pubackcomp("PUBACK")
    except Exception as exc:  # compared below, type and message
        return ("raised", type(exc), str(exc))
    return rc, seen, list(client._out_messages), client._inflight_messages


@pytest.mark.parametrize("packet", PUBACKS)
@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
def test_a_short_puback_is_handled_as_paho_handles_it(
    protocol: MQTTProtocolVersion, packet: bytes
) -> None:
    assert _acked(protocol, packet, fast=True) == _acked(protocol, packet, fast=False)


def test_the_short_forms_skip_pahos_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: paho's decoder (a new ReasonCode and Properties per PUBACK) is
    not called for mosquitto's form."""
    import paho.mqtt._packet as packet_module

    def refuse(*_a: object) -> None:
        raise AssertionError("paho's PUBACK decoder was called")

    monkeypatch.setattr(packet_module, "decode_puback", refuse)
    rc, seen, held, _ = _acked(MQTTProtocolVersion.MQTTv5, b"\x00\x01\x10", fast=True)
    assert (rc, held) == (mqtt.MQTT_ERR_SUCCESS, [])
    assert [(mid, code, failed) for mid, code, failed, _, _ in seen] == [(1, 0x10, False)]
