"""Check-in without Bluetooth: a zone poster scanned in the app becomes presence evidence.

    POST /app/checkin {code} ─► verify the poster (core/presence/posters.py)
                              ─► consent: Registry.allows(customer, "presence")
                              ─► a repeat?  the same poster, same customer, visit open
                              ─► PresencePipeline.check_in ─► visit events ─► intake

Nothing is stored for a refused check-in, and refusals are counted by reason and logged
once per reason, never with the customer or the code. Owned by the event loop (the HTTP
routes run there, as does presence).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storegate.adapters import gateway_key
from storegate.app.status import CheckinStatus
from storegate.config import CheckinConfig, Config
from storegate.core import events as ev
from storegate.core.personal.registry import Registry
from storegate.core.presence.engine import VisitState
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.posters import (
    PosterRejected,
    PosterSigner,
    VerifiedPoster,
    verify_poster,
)
from storegate.core.trust import load_public_key
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

# Check-ins remembered for the repeat rule. A store's app users scan a few posters a
# visit; past this the oldest are forgotten (a repeat then counts as a new check-in).
MAX_REMEMBERED: Final = 10_000

RefusalReason = Literal["no_presence_consent", "presence_off", "failed"]


def poster_key_path(config: Config) -> Path:
    """This gateway's poster-signing key, beside the outbox."""
    path = config.storage.path
    return path.with_name(path.stem + ".poster.key")


def load_poster_key(config: Config) -> Ed25519PrivateKey:
    """The key, made on first use (by the gateway's start or ``storegate posters``)."""
    return gateway_key.load_or_create_poster_key(poster_key_path(config))


@dataclass(frozen=True, slots=True)
class CheckedIn:
    """A check-in applied (or a repeat of one): the customer's visits after it."""

    zone: str
    poster_id: str
    repeat: bool
    store_visit: VisitState
    zone_visit: VisitState


@dataclass(frozen=True, slots=True)
class CheckinRefused:
    """``reason``: a poster's (core/presence/posters.py) or one of :data:`RefusalReason`."""

    reason: str
    detail: str
    poster: bool  # the code was at fault (not the customer or the gateway)


class CheckinService:
    def __init__(self, settings: CheckinConfig, *, store: str, zones: tuple[str, ...],
                 key: Ed25519PrivateKey, registry: Registry,
                 pipeline: Callable[[], PresencePipeline | None],
                 submit: Callable[[list[ev.EventDraft]], None],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.zones = frozenset(zones)
        self.signer = PosterSigner(key, store)
        self.keys: dict[str, Ed25519PublicKey] = {self.signer.kid: self.signer.public_key}
        for k in settings.trusted_poster_keys:
            self.keys.setdefault(k.kid, load_public_key(k.public_key))
        self.registry = registry
        self._pipeline = pipeline
        self._submit = submit
        self._wall = wall_clock
        # (customer, poster id) -> when it was applied; customers stay in memory only
        # for the repeat window, and forget() drops them at once.
        self._recent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.accepted_total = 0
        self.repeats_total = 0
        self.rejected: Counter[str] = Counter()
        self._once = LogOnce(log)

    @classmethod
    def build(cls, config: Config, *, registry: Registry,
              pipeline: Callable[[], PresencePipeline | None],
              submit: Callable[[list[ev.EventDraft]], None],
              wall_clock: Callable[[], float] = time.time) -> CheckinService:
        return cls(config.checkin, store=config.store_id,
                   zones=tuple(z.id for z in config.presence.zones),
                   key=load_poster_key(config), registry=registry, pipeline=pipeline,
                   submit=submit, wall_clock=wall_clock)

    def verify(self, code: object) -> VerifiedPoster | PosterRejected:
        return verify_poster(code, keys=self.keys, store=self.store, zones=self.zones,
                             min_generation=self.settings.min_generation, now=self._wall())

    def check_in(  # noqa: PLR0911 -- one return per outcome, in the order checked
            self, customer: str, code: object) -> CheckedIn | CheckinRefused:
        """One scan, decided and (when accepted) applied; never raises."""
        now = self._wall()
        poster = self.verify(code)
        if isinstance(poster, PosterRejected):
            return self._refuse(poster.reason, poster.detail, poster=True)
        if not self.registry.allows(customer, "presence"):
            return self._refuse("no_presence_consent", "no presence consent on record for "
                                "this customer: nothing was stored")
        pipeline = self._pipeline()
        if pipeline is None:
            return self._refuse("presence_off", "presence is not running on this gateway")
        self._expire(now)
        key = (customer, poster.poster_id)
        store_visit, zone_visit = pipeline.engine.visits(customer)
        if key in self._recent and store_visit is not None and zone_visit is not None \
                and zone_visit.zone == poster.zone:
            self.repeats_total += 1  # idempotent: the visit it opened is still open
            return CheckedIn(poster.zone, poster.poster_id, True, store_visit, zone_visit)
        try:
            drafts = pipeline.check_in(customer, poster.zone, now, hold_s=self.settings.hold_s)
        except Exception as exc:  # a bug costs this check-in, never the server
            self._once(f"checkin-failed:{type(exc).__name__}", "check-in failed: %s",
                       type(exc).__name__)
            return self._refuse("failed", "the check-in could not be applied")
        if drafts:
            self._submit(drafts)
        self._recent[key] = now
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_REMEMBERED:
            self._recent.popitem(last=False)
        self.accepted_total += 1
        store_visit, zone_visit = pipeline.engine.visits(customer)
        if store_visit is None or zone_visit is None:  # the engine just opened both
            return self._refuse("failed", "the check-in left no open visit")
        return CheckedIn(poster.zone, poster.poster_id, False, store_visit, zone_visit)

    def forget(self, customers: set[str]) -> None:
        """Consent withdrawn or erasure: their recent check-ins leave memory."""
        for key in [k for k in self._recent if k[0] in customers]:
            del self._recent[key]

    def _expire(self, now: float) -> None:
        horizon = now - self.settings.repeat_window_s
        while self._recent:
            key, at = next(iter(self._recent.items()))
            if at > horizon:
                break
            del self._recent[key]

    def _refuse(self, reason: str, detail: str, *, poster: bool = False) -> CheckinRefused:
        self.rejected[reason] += 1
        self._once(f"checkin:{reason}", "check-in refused: %s", reason)
        return CheckinRefused(reason, detail, poster)

    def snapshot(self) -> CheckinStatus:
        return CheckinStatus(accepted_total=self.accepted_total,
                             repeats_total=self.repeats_total,
                             rejected_by_reason=dict(self.rejected),
                             poster_kid=self.signer.kid,
                             generation=self.settings.generation,
                             min_generation=self.settings.min_generation)
