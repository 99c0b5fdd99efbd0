"""The WebSocket pushes go uncompressed (app/http/server.py): no permessage-deflate, so
no zlib context per held-open phone and none shared by a bearer token and later
messages (docs/http.md, "The app channel")."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from storegate.app.http.server import _uvicorn_config
from storegate.config import parse


def test_the_server_offers_no_websocket_compression(tmp_path: Path) -> None:
    cfg = parse(f"""
store_id = "s1"
gateway_id = "g1"
[storage]
path = "{tmp_path}/outbox.db"
""", source="test", base=tmp_path, environ={})
    config = _uvicorn_config(FastAPI(), cfg.http)
    assert config.ws_per_message_deflate is False
