"""The store broker as deploy/ ships it, on loopback: Debian's stock main config, the
shipped drop-in and ACL files byte for byte, password files made with mosquitto_passwd,
certificates from a test CA, and the bridge to a second mosquitto acting as central.

What differs from a store box, and nothing else (``as_tested`` asserts it line by line):

1. File paths: ``/etc/mosquitto/`` becomes ``<tmp>/etc/``, laid out the same way
   (``storegate.acl`` and ``scanners.acl`` copied unchanged, password files, certs).
2. Listener ports: 1883 and 8883 become free ports; the nodes' listener (all
   interfaces on a store box) is bound to 127.0.0.1.
3. The bridge address: ``central-mqtt.example.net:8883`` becomes central's TLS port on
   127.0.0.1 (mutual TLS, as the shipped bridge_* certificate lines expect).
4. The main config is Debian's, with its pid, persistence, log and include paths in
   ``<tmp>``, plus ``user root`` when the tests run as root (mosquitto would otherwise
   drop to user mosquitto and fail to read the test's private files).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.mosquitto import Mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "mosquitto"
DROP_IN = SHIPPED / "store-broker.conf"
ACL_FILES = ("storegate.acl", "scanners.acl")
STORE = "store-0042"
ETC = "/etc/mosquitto/"

# Debian's /etc/mosquitto/mosquitto.conf (mosquitto 2.0.11-1), comments left out.
DEBIAN_MAIN = """\
pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
"""

# The only directives whose values the test may change in the drop-in.
SUBSTITUTED = frozenset({"listener", "password_file", "acl_file", "certfile", "keyfile",
                         "address", "bridge_cafile", "bridge_certfile", "bridge_keyfile"})

PASSWORD = "correct horse battery staple"  # every test login's


def mosquitto_passwd() -> str:
    for candidate in (shutil.which("mosquitto_passwd"), "/usr/bin/mosquitto_passwd"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto_passwd is not installed (apt-get install mosquitto)")


def write_password_file(path: Path, logins: tuple[str, ...]) -> None:
    """One line per login, hashed the way an operator's mosquitto_passwd hashes it."""
    for i, login in enumerate(logins):
        create = ["-c"] if i == 0 else []
        subprocess.run([mosquitto_passwd(), *create, "-b", str(path), login, PASSWORD],
                       check=True, capture_output=True)


# --- certificates ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issued:
    cert: Path
    key: Path


class TestCA:
    """A throwaway CA: the store CA the nodes are flashed with, and central's CA."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "storegate test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False),
                critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, cert: Path, key: Path, *, server: bool,
              client_too: bool = False) -> Issued:
        """A leaf certificate: a server's for 127.0.0.1, or a client's (the bridge); a
        server's ``client_too`` is also a client's (a NATS node's route certificate)."""
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        if client_too or not server:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        built = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost"),
            ]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert.parent.mkdir(parents=True, exist_ok=True)
        cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        key.chmod(0o600)
        return Issued(cert, key)


# --- the shipped drop-in, as tested ------------------------------------------------------


def directive(line: str) -> str:
    return line.split(maxsplit=1)[0] if line.strip() else ""


def as_tested(shipped: str, etc: Path, gateway_port: int, node_port: int,
              central_port: int) -> str:
    """The drop-in with the substitutions listed in this module's docstring, and only
    those: every changed line keeps its directive, which is one of SUBSTITUTED."""
    out: list[str] = []
    for line in shipped.splitlines():
        new = line
        if not line.startswith("#"):
            new = new.replace(ETC, f"{etc}/")
            new = re.sub(r"^listener 1883 127\.0\.0\.1$", f"listener {gateway_port} 127.0.0.1",
                         new)
            new = re.sub(r"^listener 8883$", f"listener {node_port} 127.0.0.1", new)
            new = re.sub(r"^address \S+$", f"address 127.0.0.1:{central_port}", new)
        out.append(new)
    tested = "\n".join(out) + "\n"
    changed = [(a, b) for a, b in zip(shipped.splitlines(), out, strict=True) if a != b]
    for before, after in changed:
        assert directive(before) == directive(after) and directive(before) in SUBSTITUTED, (
            f"a substitution changed more than a path, port or address: {before!r} -> {after!r}")
    return tested


@dataclass
class StoreBroker:
    """The running pair; ``ca`` is what a node (and central's clients) trust."""

    store: Mosquitto
    central: Mosquitto
    gateway_port: int
    node_port: int
    ca: Path
    shipped: str
    tested: str

    def stop(self) -> None:
        self.store.kill()
        self.central.kill()


def debian_main(work: Path) -> str:
    main = (DEBIAN_MAIN
            .replace("/run/mosquitto/", f"{work}/")
            .replace("/var/lib/mosquitto/", f"{work}/")
            .replace("/var/log/mosquitto/", f"{work}/")
            .replace("/etc/mosquitto/conf.d", f"{work}/conf.d"))
    return (main + ("user root\n" if os.geteuid() == 0 else "")
            # SG_TEST_BROKER_LOG=all logs every packet, as in tests/support/mosquitto.py.
            + ("log_type all\n" if os.environ.get("SG_TEST_BROKER_LOG") == "all" else ""))


def start_store_broker(work: Path, *, gateways: tuple[str, ...],
                       nodes: tuple[str, ...]) -> StoreBroker:
    """Central first (mutual TLS for the bridge, plus a plain listener for the test's
    central-side clients), then the store broker on Debian's main config."""
    etc = work / "etc"
    certs = etc / "certs"
    certs.mkdir(parents=True)
    ca = TestCA(work)
    shutil.copy(ca.path, certs / "central-ca.pem")
    ca.issue("store-broker", certs / "store-broker.pem", certs / "store-broker.key",
             server=True)
    ca.issue(f"bridge-{STORE}", certs / f"{STORE}.pem", certs / f"{STORE}.key", server=False)
    central_tls = ca.issue("central", work / "central.pem", work / "central.key", server=True)
    for name in ACL_FILES:
        shutil.copy(SHIPPED / name, etc / name)
    write_password_file(etc / "storegate.passwd", gateways)
    write_password_file(etc / "scanners.passwd", nodes)

    central_bridge_port = free_port()
    central = Mosquitto(work / "central", extra=(
        f"listener {central_bridge_port} 127.0.0.1\n"
        f"cafile {ca.path}\ncertfile {central_tls.cert}\nkeyfile {central_tls.key}\n"
        "require_certificate true\n"))
    central.start()

    gateway_port, node_port = free_port(), free_port()
    shipped = DROP_IN.read_text()
    tested = as_tested(shipped, etc, gateway_port, node_port, central_bridge_port)
    store_dir = work / "store"
    (store_dir / "conf.d").mkdir(parents=True)
    (store_dir / "conf.d" / "storegate.conf").write_text(tested)
    store = Mosquitto(store_dir, port=gateway_port, config=debian_main(store_dir))
    try:
        store.start()
    except BaseException:
        central.kill()
        raise
    return StoreBroker(store, central, gateway_port, node_port, ca.path, shipped, tested)
