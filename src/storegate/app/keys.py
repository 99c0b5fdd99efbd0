"""``storegate keys``: central's signing helper, and this gateway's sealing key.

Central teams (and the tests) use it to make commands a gateway accepts::

    storegate keys new-central --out central.key --kid central-2026-12
    storegate keys gateway -c /etc/storegate/store.toml        # on the box: its seal key
    storegate keys sign --key central.key --kid central-2026-12 --store store-0042 \\
        --seal-to gw-1=<seal key> identities upsert.json | mosquitto_pub -t ... -s

The private signing key stays with central; a gateway's config holds only the public
key (``[[trust.central_keys]]``), which ``new-central`` prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from pydantic import ValidationError

from storegate.adapters import gateway_key
from storegate.config import Config
from storegate.core import seal
from storegate.core.commands import COMMANDS, seal_identities
from storegate.core.identity_records import IdentityRecord
from storegate.core.topics import CENTRAL, ROOT, is_valid_id
from storegate.core.trust import KID_PATTERN, public_key_text, sign_command
from storegate.errors import DataFileError, UsageError

MAX_PAYLOAD_BYTES = 256 * 1024 * 1024


def cmd_new_central(args: argparse.Namespace) -> int:
    if not KID_PATTERN.fullmatch(args.kid):
        raise UsageError(f"--kid {args.kid!r}: 1-64 of A-Z a-z 0-9 . _ : -")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise UsageError(f"{args.out} exists: a signing key is never overwritten") from exc
    except OSError as exc:
        raise UsageError(f"cannot create {args.out}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(f"# private key in {args.out} (keep it with central, mode 0600); each gateway's "
          "config gets:")
    print(f'[[trust.central_keys]]\nkid = "{args.kid}"\n'
          f'public_key = "{public_key_text(key.public_key())}"')
    return 0


def _signing_key(path: str) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise DataFileError(path, "not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise DataFileError(path, "not an Ed25519 private key")
    return key


def cmd_public(args: argparse.Namespace) -> int:
    print(public_key_text(_signing_key(args.key).public_key()))
    return 0


def cmd_gateway(config: Config) -> int:
    """Read-only: the key is made by the gateway itself on its first start, as the
    service's user (made here by root, the service could not read it)."""
    path = config.seal_key_path
    if not path.exists():
        raise UsageError(f"{path}: no sealing key yet; the gateway makes it on its first "
                         "start (and announces it in its birth certificate)")
    key = gateway_key.load(path)
    print(seal.public_text(key.public_key()))
    return 0


def _payload(source: str) -> dict[str, Any]:
    try:
        raw = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1) if source == "-" else \
            Path(source).read_bytes()
    except OSError as exc:
        raise DataFileError(source, f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise DataFileError(source, "larger than 256 MiB")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DataFileError(source, f"not JSON: {exc}"[:200]) from exc
    if not isinstance(data, dict):
        raise DataFileError(source, "the payload is a JSON object")
    return data


def _seal_records(payload: dict[str, Any], seal_to: list[str], store: str,
                  source: str) -> None:
    """Identities given in clear are sealed to the gateways named by --seal-to: an
    identities command's records, a customers command's ``identity`` fields."""
    customers = payload.get("customers") if "identities" not in payload else None
    holders: list[dict[str, Any]] = []  # customers command: the records carrying one
    if isinstance(customers, list):
        holders = [c for c in customers if isinstance(c, dict)
                   and isinstance(c.get("identity"), dict) and "identity_key" in c["identity"]]
        records: Any = [c["identity"] for c in holders]
        field = "customers.identity"
    else:
        records, field = payload.get("identities"), "identities"
    if not records:
        return
    if not seal_to:
        raise UsageError("identities need --seal-to GATEWAY=SEAL_KEY (each gateway of the "
                         "store; `storegate keys gateway` prints a gateway's key)")
    recipients = {}
    for item in seal_to:
        gw, _, text = item.partition("=")
        if not is_valid_id(gw):
            raise UsageError(f"--seal-to {item!r}: GATEWAY=SEAL_KEY")
        try:
            recipients[gw] = seal.load_public(text)
        except ValueError as exc:
            raise UsageError(f"--seal-to {gw}: {exc}") from exc
    try:
        clear = [IdentityRecord.model_validate(r, context={"now": time.time()})
                 for r in records]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = field + "." + ".".join(str(x) for x in first["loc"])
        raise DataFileError(source, first["msg"], where) from exc
    sealed, wrapped = seal_identities(clear, recipients, store=store, rand=os.urandom)
    if holders:
        for holder, s in zip(holders, sealed, strict=True):
            holder["identity"] = s
    else:
        payload["identities"] = sealed
    payload["sealed_to"] = wrapped


def cmd_sign(args: argparse.Namespace) -> int:
    if args.command not in COMMANDS:
        raise UsageError(f"unknown command {args.command!r}: one of {sorted(COMMANDS)}")
    if args.store != "*" and not is_valid_id(args.store):
        raise UsageError(f"--store {args.store!r} is not a store id (or '*' for all)")
    key = _signing_key(args.key)
    payload = _payload(args.payload)
    if args.command in {"identities", "customers"}:
        _seal_records(payload, args.seal_to, args.store, args.payload)
    try:
        message = sign_command(
            key, kid=args.kid, command=args.command, store=args.store, payload=payload,
            issued_at=time.time() if args.issued_at is None else args.issued_at,
            command_id=args.id or f"cmd-{uuid.uuid4()}")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    topic = (f"{CENTRAL}/{args.command}" if args.store == "*"
             else f"{ROOT}/{args.store}/commands/{args.command}")
    print(f"topic: {topic}", file=sys.stderr)
    sys.stdout.write(message.decode("ascii") + "\n")
    return 0


def add_parser(sub: Any, add_config: Callable[[argparse.ArgumentParser], None],
               config_of: Callable[[argparse.Namespace], Config]) -> None:
    pk = sub.add_parser("keys", help="sign commands (central) and show this gateway's "
                        "sealing key")
    ksub = pk.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("new-central", help="make central's Ed25519 signing key; print the "
                        "public key for gateways' [trust] config")
    p.add_argument("--out", required=True, help="private key file (created 0600)")
    p.add_argument("--kid", required=True, help="key id, e.g. central-2026-12")
    p.set_defaults(func=cmd_new_central)
    p = ksub.add_parser("public", help="print the public key of a signing key file")
    p.add_argument("key")
    p.set_defaults(func=cmd_public)
    p = ksub.add_parser("gateway", help="print this gateway's X25519 sealing public key "
                        "(made on first use)")
    add_config(p)
    p.set_defaults(func=lambda a: cmd_gateway(config_of(a)))
    p = ksub.add_parser("sign", help="sign a command; the envelope goes to stdout, its "
                        "topic to stderr")
    p.add_argument("--key", required=True, help="central's private key file")
    p.add_argument("--kid", required=True, help="the key's id, as gateways know it")
    p.add_argument("--store", required=True, help="store id, or '*' for every store")
    p.add_argument("--seal-to", action="append", default=[], metavar="GATEWAY=SEAL_KEY",
                   help="identities: seal the keys to this gateway (repeat per gateway)")
    p.add_argument("--issued-at", type=float, default=None, help="epoch seconds "
                   "(default: now)")
    p.add_argument("--id", default=None, help="command id (default: a new UUID)")
    p.add_argument("command", help=f"one of {', '.join(sorted(COMMANDS))}")
    p.add_argument("payload", nargs="?", default="-", help="the payload, a JSON file "
                   "(default: standard input)")
    p.set_defaults(func=cmd_sign)
