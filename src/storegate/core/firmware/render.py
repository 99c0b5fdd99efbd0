"""What each device and the broker are given: ESPHome YAML, ESPresense settings, the
broker's password lines; and the store's secrets, generated once and kept.

Pure: entropy comes in as ``rand(n) -> bytes``; app/firmware.py writes the files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from storegate.core.firmware.fleet import NodeRecord, StoreFile, secret_stem

PASSWORD_BYTES: Final = 24  # 32 characters of base64url: 192 bits
# mosquitto 2.0's password file hash ("$7$"): PBKDF2-HMAC-SHA512, 101 iterations, a
# 12-byte salt, 64 bytes out, both base64 (mosquitto_passwd writes the same; the
# broker test logs in with a file written here).
MOSQUITTO_ITERATIONS: Final = 101
MOSQUITTO_SALT_BYTES: Final = 12
Rand = Callable[[int], bytes]


def new_password(rand: Rand) -> str:
    return base64.urlsafe_b64encode(rand(PASSWORD_BYTES)).decode().rstrip("=")


def password_line(username: str, password: str, rand: Rand) -> str:
    """One line of a mosquitto password file."""
    salt = rand(MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS)
    b64 = base64.b64encode
    return (f"{username}:$7${MOSQUITTO_ITERATIONS}${b64(salt).decode()}"
            f"${b64(digest).decode()}")


def password_line_matches(line: str, username: str, password: str) -> bool:
    """Whether an existing password-file line is ``username`` with ``password``: kept
    as it is, a re-render leaves the file unchanged (no broker reload)."""
    user, _, rest = line.strip().partition(":")
    parts = rest.split("$")
    if user != username or len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= 1_000_000:
        return False
    return hmac.compare_digest(
        hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations), digest)


@dataclass
class Secrets:
    """The store's device secrets. ``logins``: broker login -> password; ``ota``:
    ESPHome node -> OTA password; ``wifi_password``: the devices' Wi-Fi, given by the
    operator (storegate never makes it up)."""

    logins: dict[str, str] = field(default_factory=dict)
    ota: dict[str, str] = field(default_factory=dict)
    wifi_password: str | None = None

    def to_json(self) -> str:
        return json.dumps({"logins": self.logins, "ota": self.ota,
                           "wifi_password": self.wifi_password}, indent=2, sort_keys=True)

    @classmethod
    def from_obj(cls, obj: Any) -> Secrets:
        """From the secrets file's JSON; ValueError saying what is wrong."""
        if not isinstance(obj, dict) or set(obj) - {"logins", "ota", "wifi_password"}:
            raise ValueError("expected an object with logins, ota, wifi_password")
        out = cls(wifi_password=obj.get("wifi_password"))
        for key in ("logins", "ota"):
            table = obj.get(key, {})
            if not isinstance(table, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and v for k, v in table.items()):
                raise ValueError(f"{key}: an object of name -> non-empty text")
            setattr(out, key, dict(table))
        if out.wifi_password is not None and not isinstance(out.wifi_password, str):
            raise ValueError("wifi_password: text")
        return out


@dataclass(frozen=True, slots=True)
class SecretsChange:
    secrets: Secrets
    created: int
    kept: int
    removed: int


def complete(old: Secrets, logins: Iterable[str], ota: Iterable[str],
             rand: Rand) -> SecretsChange:
    """Every needed secret: kept if it exists, made if not; those no longer needed are
    dropped (a removed node's login must stop working)."""
    created = kept = 0
    new = Secrets(wifi_password=old.wifi_password)
    for names, src, dst in ((logins, old.logins, new.logins), (ota, old.ota, new.ota)):
        for name in names:
            if name in src:
                dst[name] = src[name]
                kept += 1
            else:
                dst[name] = new_password(rand)
                created += 1
    removed = len(set(old.logins) - set(new.logins)) + len(set(old.ota) - set(new.ota))
    return SecretsChange(new, created, kept, removed)


# --- node files ------------------------------------------------------------------------


def adverts_topic(store_id: str, node: str) -> str:
    return f"storegate/v1/{store_id}/scanners/{node}/adverts"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of YAML's)."""
    return json.dumps(text)


def _secret_key(prefix: str, node: str) -> str:
    return f"{prefix}_{secret_stem(node)}"  # unique per node: fleet.cross_check


# The advert as docs/presence.md's raw-advert format: address, rssi, manufacturer data
# keyed by company id (decimal), service data by the 128-bit UUID in lower case, name.
# ArduinoJson 7 (ESPHome 2024.x and later).
_ADVERT_LAMBDA: Final = """\
root["address"] = x.address_str();
root["rssi"] = x.get_rssi();
if (!x.get_name().empty()) root["name"] = x.get_name();
JsonObject md = root["manufacturer_data"].to<JsonObject>();
for (auto &m : x.get_manufacturer_datas()) {
  md[to_string(m.uuid.get_uuid().uuid.uuid16)] = format_hex(m.data);
}
JsonObject sd = root["service_data"].to<JsonObject>();
for (auto &s : x.get_service_datas()) {
  std::string u = s.uuid.as_128bit().to_string();
  for (auto &c : u) c = tolower(c);
  sd[u] = format_hex(s.data);
}"""


def esphome_yaml(fleet: StoreFile, node: NodeRecord, ca_pem: str | None) -> str:
    """An ESPHome configuration: Wi-Fi, MQTT over TLS to the store broker with the
    node's own login (secrets in secrets.yaml beside it), and every advert heard
    published raw to the node's adverts topic."""
    store = fleet.store.id
    b = fleet.broker
    where = f" at {list(node.position)} m" if node.position else ""
    lines = [
        f"# storegate scanner node {node.name}: zone {node.zone}{where}, store {store}.",
        "# Rendered by `storegate firmware render`: change firmware-configs/, not this file.",
        "# Secrets (!secret) are in secrets.yaml beside it (mode 0600; never commit it).",
        "esphome:",
        f"  name: {_q(node.name)}",
        "esp32:",
        f"  board: {_q(node.board)}",
        "  framework:",
        "    type: esp-idf  # MQTT over TLS with a CA is ESP-IDF only",
        "wifi:",
        "  ssid: !secret wifi_ssid",
        "  password: !secret wifi_password",
        "logger:",
        "  level: WARN",
        "ota:",
        "  - platform: esphome",
        f"    password: !secret {_secret_key('ota', node.name)}",
        "mqtt:",
        f"  broker: {_q(b.host)}",
        f"  port: {b.tls_port}",
        f"  username: {_q(node.name)}",
        f"  password: !secret {_secret_key('mqtt', node.name)}",
        f"  client_id: {_q(node.name)}",
        "  discovery: false",
        "  # the ACL lets a node write its adverts only: no birth, will or log topics",
        "  birth_message:",
        "  will_message:",
        "  shutdown_message:",
        "  log_topic: null",
        f"  topic_prefix: {_q(f'storegate/v1/{store}/scanners/{node.name}')}",
    ]
    if ca_pem:
        lines.append("  certificate_authority: |")
        lines.extend(f"    {ln}" for ln in ca_pem.strip().splitlines())
    else:
        lines.append("  # certificate_authority: the store CA (render with --ca FILE)")
    lines += [
        "esp32_ble_tracker:",
        "  scan_parameters:",
        f"    interval: {node.scan_interval_ms}ms",
        f"    window: {node.scan_window_ms}ms",
        "    active: false  # passive: phones are never asked for scan responses",
        "  on_ble_advertise:",
        "    - then:",
        "        - mqtt.publish_json:",
        f"            topic: {_q(adverts_topic(store, node.name))}",
        "            qos: 0",
        "            payload: !lambda |-",
        *(f"              {ln}" for ln in _ADVERT_LAMBDA.splitlines()),
        "",
    ]
    return "\n".join(lines)


def esphome_secrets_yaml(fleet: StoreFile, nodes: Iterable[NodeRecord],
                         secrets: Secrets) -> str:
    lines = ["# ESPHome secrets for the store's nodes (storegate firmware render).",
             f"wifi_ssid: {_q(fleet.wifi.ssid)}"]
    if secrets.wifi_password is not None:
        lines.append(f"wifi_password: {_q(secrets.wifi_password)}")
    for n in nodes:
        lines.append(f"{_secret_key('mqtt', n.name)}: {_q(secrets.logins[n.name])}")
        lines.append(f"{_secret_key('ota', n.name)}: {_q(secrets.ota[n.name])}")
    return "\n".join(lines) + "\n"


def espresense_settings(fleet: StoreFile, node: NodeRecord,
                        secrets: Secrets) -> dict[str, Any]:
    """The settings an ESPresense node is given in its captive portal (the names its
    firmware stores them under). Over the plain listener: ESPresense has no TLS."""
    out: dict[str, Any] = {
        "room": node.name,
        "wifi-ssid": fleet.wifi.ssid,
        "mqtt_host": fleet.broker.host,
        "mqtt_port": fleet.broker.plain_port,
        "mqtt_user": node.name,
        "mqtt_pass": secrets.logins[node.name],
        "discovery": False,  # Home Assistant discovery: refused by the ACL
        "pub_tele": True,
        "pub_devices": True,
    }
    if secrets.wifi_password is not None:
        out["wifi-password"] = secrets.wifi_password
    return out


def password_file(logins: Iterable[str], secrets: Secrets, rand: Rand,
                  old: dict[str, str] | None = None) -> str:
    """A mosquitto password file; a line of ``old`` (user -> line) that still matches
    its password is kept, so the file only changes when a login does."""
    out = []
    for u in logins:
        line = (old or {}).get(u)
        keep = line is not None and password_line_matches(line, u, secrets.logins[u])
        out.append((line.strip() if keep and line else password_line(u, secrets.logins[u], rand))
                   + "\n")
    return "".join(out)


def gateway_env(gateway: str, secrets: Secrets) -> str:
    """The gateway's broker login for systemd's EnvironmentFile (secrets.env)."""
    return (f"# {gateway}'s login on the store broker (storegate firmware render)\n"
            f"STOREGATE_MQTT__USERNAME={gateway}\n"
            f"STOREGATE_MQTT__PASSWORD={secrets.logins[gateway]}\n")
