"""Central's outbound side: sign a command, record it, publish it to the store.

Every command is written to the ``commands`` table before it is published (so what was
asked is known even if the publish fails) and marked ``sent_at`` on the broker's
PUBACK. The gateways' answers (``gateway.*_applied``, ``gateway.replayed``,
``gateway.erased``, ``gateway.command_rejected``) carry the command id; ingest files
them in ``answers`` (app/central/ingest.py), so "what the gateway answered" is a
query: :meth:`Commands.answers`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storegate.adapters.central import records
from storegate.adapters.central.storage import Database
from storegate.core.topics import CENTRAL, ROOT
from storegate.core.trust import sign_command

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], bool]  # (topic, payload) -> acknowledged by the broker


RESEND_AFTER_S: Final = 5.0     # a publish not acknowledged goes again after this
RESEND_WINDOW_S: Final = 3600.0  # within the box's trust.max_age_s (a day by default)


def command_topic(store: str, name: str) -> str:
    return f"{CENTRAL}/{name}" if store == "*" else f"{ROOT}/{store}/commands/{name}"


class Commands:
    def __init__(self, db: Database, key: Ed25519PrivateKey, kid: str,
                 publish: Publish, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._key = key
        self._kid = kid
        self._publish = publish
        self._clock = clock

    def send(self, store: str, name: str, payload: Mapping[str, Any], *,
             purpose: str | None = None) -> str:
        """Sign, record and publish; returns the command id (sent or not: a command
        not acknowledged by the broker keeps ``sent_at`` null, is logged, and goes
        again on :meth:`resend_unsent`)."""
        return self.send_acked(store, name, payload, purpose=purpose)[0]

    def send_acked(self, store: str, name: str, payload: Mapping[str, Any], *,
                   purpose: str | None = None) -> tuple[str, bool]:
        """:meth:`send`, and whether the broker acknowledged it."""
        command_id = f"c-{uuid.uuid4()}"
        issued_at = self._clock()
        wire = sign_command(self._key, kid=self._kid, command=name, store=store,
                            payload=payload, issued_at=issued_at, command_id=command_id)
        request_id = payload.get("request_id")
        with self._db.tx() as db:
            records.insert_command(db, command_id=command_id, store=store, name=name,
                                   request_id=request_id if isinstance(request_id, str)
                                   else None, purpose=purpose, issued_at=issued_at,
                                   wire=wire)
        return command_id, self._publish_recorded(command_id, store, name, wire)

    def _publish_recorded(self, command_id: str, store: str, name: str,
                          wire: bytes) -> bool:
        try:
            acked = self._publish(command_topic(store, name), wire)
        except Exception as exc:  # the source's connection: the row stays unsent
            log.warning("central: publishing %s command %s to %s failed: %s", name,
                        command_id, store, exc)
            acked = False
        if acked:
            with self._db.tx() as db:
                records.command_sent(db, command_id, self._clock())
        else:
            log.warning("central: %s command %s to %s not acknowledged by the broker; "
                        "it goes again on the next pass", name, command_id, store)
        return acked

    def resend_unsent(self, now: float, *, after_s: float = RESEND_AFTER_S,
                      window_s: float = RESEND_WINDOW_S, limit: int = 100) -> int:
        """Publish again (the same signed bytes, the same id: the box applies a command
        id once) the commands the broker did not acknowledge, issued ``after_s`` ago
        at least and within ``window_s`` (older ones the box would refuse as expired:
        their callers re-issue, e.g. :meth:`CentralService.tend` for erasures).
        Returns how many the broker acknowledged now."""
        with self._db.tx() as db:
            due = records.rows(db, "SELECT id, store, name, wire FROM commands WHERE "
                               "sent_at IS NULL AND issued_at <= ? AND issued_at >= ? "
                               "ORDER BY issued_at LIMIT ?",
                               (now - after_s, now - window_s, limit))
        return sum(self._publish_recorded(r[0], r[1], r[2], bytes(r[3])) for r in due)

    def answers(self, command_id: str) -> list[dict[str, Any]]:
        with self._db.tx() as db:
            return records.answers_to(db, command_id)
