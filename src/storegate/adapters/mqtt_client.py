"""How to reach the broker: the MQTT connection settings and a paho client made from them.

Shared by every MQTT client the gateway runs (the publisher, the scanner-node listener,
capture), so protocol, credentials and TLS are applied one way everywhere.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from storegate.core.backoff import Backoff

DEFAULT_BACKOFF: Final = Backoff(0.5, 30.0)
# A refusal is a broker's (or its ACL's) decision, not a network blip: retry it rarely
# (first after 1 s, at most every 5 min per event), never in a loop.
REFUSAL_BACKOFF: Final = Backoff(1.0, 300.0)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    window: int = 20
    connect_timeout_s: float = 10.0
    backoff: Backoff = DEFAULT_BACKOFF
    tls: TlsSettings | None = None
    refusal_backoff: Backoff = REFUSAL_BACKOFF

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def base_client(s: MqttSettings, client_id: str, *, reconnect_on_failure: bool,
                clean_session: bool | None) -> mqtt.Client:
    """A paho client with the connection settings (protocol, credentials, TLS) applied."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311,
        clean_session=clean_session,
        reconnect_on_failure=reconnect_on_failure,
    )
    client.connect_timeout = s.connect_timeout_s
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls is not None:
        t = s.tls
        client.tls_set(
            ca_certs=str(t.ca_file) if t.ca_file else None,
            certfile=str(t.cert_file) if t.cert_file else None,
            keyfile=str(t.key_file) if t.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if t.insecure:
            client.tls_insecure_set(True)
    return client
