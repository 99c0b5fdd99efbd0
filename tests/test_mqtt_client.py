"""The MQTT connection settings and ``base_client``, directly: what each setting does to a
paho client, and (e2e) that a real mosquitto sees it: protocol, credentials, TLS with a
client certificate, host name checking and ``insecure``. The publisher, the node client
and capture all connect through ``base_client``; their own tests cover what they do next.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from storegate.adapters.mqtt_client import (
    DEFAULT_BACKOFF,
    REFUSAL_BACKOFF,
    MqttSettings,
    TlsSettings,
    base_client,
)
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.store_broker import PASSWORD, TestCA, write_password_file
from tests.support.waiting import wait_for

LOGIN = "gw-1"


def client_for(s: MqttSettings) -> mqtt.Client:
    return base_client(s, s.client_id, reconnect_on_failure=False,
                       clean_session=True if s.protocol == "3.1.1" else None)


# --- unit: settings and the client made from them ----------------------------------------


def test_the_url_says_whether_tls_is_on() -> None:
    plain = MqttSettings("broker.local", 1883, "gw")
    assert plain.url == "mqtt://broker.local:1883"
    assert dataclasses.replace(plain, port=8883, tls=TlsSettings()).url == (
        "mqtts://broker.local:8883")


def test_defaults_and_settings_are_frozen() -> None:
    s = MqttSettings("h", 1883, "gw")
    assert (s.protocol, s.username, s.password, s.tls) == ("5", None, None, None)
    assert s.backoff == DEFAULT_BACKOFF and s.refusal_backoff == REFUSAL_BACKOFF
    assert REFUSAL_BACKOFF.min_s >= DEFAULT_BACKOFF.min_s  # a refusal is retried rarely
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.host = "elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TlsSettings().insecure = True  # type: ignore[misc]


@pytest.mark.parametrize(("protocol", "expected"), [("5", mqtt.MQTTv5),
                                                    ("3.1.1", mqtt.MQTTv311)])
def test_protocol_timeout_and_credentials_reach_the_client(protocol: str,
                                                           expected: int) -> None:
    s = MqttSettings("h", 1883, "gw", protocol=protocol,  # type: ignore[arg-type]
                     username="gw-1", password="secret", connect_timeout_s=3.5)
    client = client_for(s)
    assert client.protocol == expected
    assert client.connect_timeout == 3.5
    assert (client.username, client.password) == ("gw-1", "secret")


def test_no_username_means_no_credentials_even_with_a_password() -> None:
    client = client_for(MqttSettings("h", 1883, "gw", password="stray"))
    assert client.username is None and client.password is None


def test_a_missing_tls_file_fails_when_the_client_is_made(tmp_path: Path) -> None:
    """Not at the first connect, hours later: (``config check`` names the file first)."""
    ca = TestCA(tmp_path)
    for tls in (TlsSettings(ca_file=tmp_path / "gone.pem"),
                TlsSettings(ca_file=ca.path, cert_file=tmp_path / "c.pem",
                            key_file=tmp_path / "c.key")):
        with pytest.raises(FileNotFoundError):
            client_for(MqttSettings("h", 8883, "gw", tls=tls))


def test_a_file_that_is_not_a_certificate_fails_when_the_client_is_made(
        tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        client_for(MqttSettings("h", 8883, "gw", tls=TlsSettings(ca_file=bad)))


# --- e2e: a real mosquitto ---------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    port: int  # plain, on 127.0.0.1
    tls_port: int  # TLS with client certificates, on 127.0.0.2 (not in the certificate)
    ca: Path
    client_cert: Path
    client_key: Path
    log: Path


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Broker]:
    """Logins required; a TLS listener that wants a client certificate."""
    ca = TestCA(tmp_path)
    server = ca.issue("broker", tmp_path / "server.pem", tmp_path / "server.key",
                      server=True)
    client = ca.issue(LOGIN, tmp_path / "client.pem", tmp_path / "client.key",
                      server=False)
    passwords = tmp_path / "passwd"
    write_password_file(passwords, (LOGIN,))
    port, tls_port = free_port(), free_port()
    log = tmp_path / "mosquitto" / "mosquitto.log"
    config = (
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"password_file {passwords}\n"
        + ("user root\n" if os.geteuid() == 0 else "")
        + f"log_dest file {log}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        f"listener {port} 127.0.0.1\n"
        f"listener {tls_port} 127.0.0.2\n"
        f"cafile {ca.path}\ncertfile {server.cert}\nkeyfile {server.key}\n"
        "require_certificate true\n")
    b = Mosquitto(tmp_path / "mosquitto", port=port, config=config)
    b.start()
    try:
        yield Broker(port, tls_port, ca.path, client.cert, client.key, log)
    finally:
        b.kill()


def connect(s: MqttSettings, host: str | None = None) -> str:
    """``success``, the broker's refusal, or why the connection never got that far."""
    client = client_for(s)
    answers: queue.Queue[str] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.put(str(reason).lower())
    client.on_disconnect = lambda _c, _u, _f, reason, _p: answers.put(
        f"dropped: {reason}")
    try:
        client.connect(host or s.host, s.port, keepalive=s.keepalive_s)
    except (OSError, ssl.SSLError) as exc:
        return f"failed: {type(exc).__name__}"
    client.loop_start()
    try:
        return answers.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.e2e
@pytest.mark.parametrize(("protocol", "level"), [("5", "p5"), ("3.1.1", "p2")])
def test_the_broker_sees_the_protocol_and_accepts_the_login(
        secured: Broker, protocol: str, level: str) -> None:
    s = MqttSettings("127.0.0.1", secured.port, f"gw-{protocol}",
                     protocol=protocol,  # type: ignore[arg-type]
                     username=LOGIN, password=PASSWORD)
    assert connect(s) == "success"
    # mosquitto logs each connection's protocol (its own numbering: p2 is 3.1.1)
    wait_for(lambda: f"as gw-{protocol} ({level}," in secured.log.read_text(), 10,
             f"the broker logging gw-{protocol} as {level}")


@pytest.mark.e2e
def test_credentials_are_what_the_broker_checks(secured: Broker) -> None:
    s = MqttSettings("127.0.0.1", secured.port, "gw", username=LOGIN, password="guess")
    assert connect(s) == "not authorized"
    assert connect(dataclasses.replace(s, username=None, password=None)) == (
        "not authorized")


@pytest.mark.e2e
def test_tls_with_a_client_certificate_connects(secured: Broker) -> None:
    tls = TlsSettings(ca_file=secured.ca, cert_file=secured.client_cert,
                      key_file=secured.client_key)
    s = MqttSettings("127.0.0.2", secured.tls_port, "gw", username=LOGIN,
                     password=PASSWORD, tls=tls)
    # 127.0.0.2 is not in the broker's certificate: refused unless insecure is set
    assert connect(s) == "failed: SSLCertVerificationError"
    insecure = dataclasses.replace(s, tls=dataclasses.replace(tls, insecure=True))
    assert connect(insecure) == "success"
    # the login still counts over TLS (the certificate is not a login here)
    assert connect(dataclasses.replace(insecure, password="guess")) == "not authorized"


@pytest.mark.e2e
def test_tls_refuses_a_broker_signed_by_another_ca_even_when_insecure(
        secured: Broker, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = TestCA(tmp_path / "other")
    tls = TlsSettings(ca_file=other.path, cert_file=secured.client_cert,
                      key_file=secured.client_key, insecure=True)
    s = MqttSettings("127.0.0.2", secured.tls_port, "gw", username=LOGIN,
                     password=PASSWORD, tls=tls)
    assert connect(s) == "failed: SSLCertVerificationError"


@pytest.mark.e2e
def test_tls_without_the_client_certificate_is_refused_by_the_broker(
        secured: Broker) -> None:
    tls = TlsSettings(ca_file=secured.ca, insecure=True)
    s = MqttSettings("127.0.0.2", secured.tls_port, "gw", username=LOGIN,
                     password=PASSWORD, tls=tls)
    # TLS 1.3: the handshake completes on the client's side, then the broker hangs up
    assert connect(s).startswith(("dropped:", "failed:"))
