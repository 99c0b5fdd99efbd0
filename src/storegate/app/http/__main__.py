"""``python -m storegate.app.http hash-secret [--kind scrypt|pbkdf2-sha256|sha256]``:
read a secret (PIN, device or admin token) from stdin or a prompt and print the hash
to put in ``[http]`` (the secret itself never goes in the config)."""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys

from storegate.core.webauth import hash_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storegate.app.http")
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hash-secret", help="hash a PIN or token for [http]")
    h.add_argument("--kind", choices=("scrypt", "pbkdf2-sha256", "sha256"), default=None,
                   help="default: scrypt for a PIN (short), sha256 for a token (long)")
    sub.add_parser("new-token", help="print a new random token and its sha256 hash")
    args = parser.parse_args(argv)
    if args.command == "new-token":
        token = secrets.token_urlsafe(32)
        print(token)
        print(hash_secret(token, salt=b"", kind="sha256"))
        return 0
    secret = (sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty()
              else getpass.getpass("secret: "))
    kind = args.kind or ("sha256" if len(secret) >= 20 else "scrypt")
    try:
        print(hash_secret(secret, salt=os.urandom(16), kind=kind))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
