"""The staff screens' live state in the gateway: the event flow in, hub notices and
access events out (core/personal/screens.py decides; this wires it).

    PersonalService ──on_processed(drafts)──► ScreenState.feed ──► hub "lane:<id>", "floor"
    customers change ──on_registry_changed──► every screen recomputed
    staff_view withdrawn / erasure ──forget(customers)──► gone from every screen at once

The hub carries only *that* a screen changed (``{"topic": ...}``), never a profile: the
projection for a role is computed on the notice (once per notice and role, the same
frame to every screen of that lane and role), so no unprojected personal data sits in a
queue, and a withdrawal or erasure takes effect on the very next frame. Every
projection that shows personal fields is an access: one
``storegate.staff.viewed.v1`` per (staff session, customer, transaction), through the
intake like any event. Owned by the event loop.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from storegate.app.http.hub import Hub, Message
from storegate.app.status import ScreensStatus
from storegate.core import events as ev
from storegate.core.personal.offers import OfferEngine
from storegate.core.personal.registry import Registry
from storegate.core.personal.screens import (
    FloorScreen,
    LaneScreen,
    ScreenField,
    ScreenOffer,
    ScreenState,
    StaffRole,
    Who,
    viewed_draft,
)
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

Emit = Callable[[list[ev.EventDraft]], None]
Clock = Callable[[], float]

# (session, customer, transaction) accesses already logged. A store has tens of screens
# and a few hundred customers an hour: past this the oldest is forgotten (a repeat view
# then logs again, which errs on the side of the log).
MAX_ACCESS_KEYS: Final = 10_000
SESSION_PSEUDONYM_SALT: Final = b"storegate/staff-session/v1:"


def session_pseudonym(cookie: str) -> str:
    """A stable pseudonym of a staff session for the access log: a domain-separated hash
    of the cookie (256 random bits), so it joins one sign-in's views and can neither be
    replayed as the cookie nor matched against the session store's keys."""
    return hashlib.sha256(SESSION_PSEUDONYM_SALT + cookie.encode()).hexdigest()[:32]


class ScreenService:
    """The lanes' and the floor's screen state, fed by the personal service."""

    def __init__(self, state: ScreenState, hub: Hub, *, emit: Emit, clock: Clock,
                 engine: OfferEngine | None = None) -> None:
        self.state = state
        self.hub = hub
        self.engine = engine
        self._emit = emit
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str, str | None], None] = OrderedDict()
        # the last frame rendered per (kind, lane, role), with the change notice it
        # answered: one entry per lane and role (notices come only for real topics)
        self._frames: dict[tuple[str, str, StaffRole], tuple[
            Message, str, Who, tuple[ScreenField, ...]]] = {}
        self._floor_frames: dict[tuple[str, str, StaffRole], tuple[
            Message, str, list[tuple[str, tuple[ScreenField, ...]]]]] = {}
        # observable state (since start, no ids)
        self.published_total = 0
        self.accesses_total = 0
        self.errors_total = 0
        self._warn = LogOnce(log)

    @classmethod
    def empty(cls, clock: Clock) -> ScreenService:
        """A service nothing feeds (an HTTP app without a gateway behind it): every
        screen shows nobody."""
        return cls(ScreenState(Registry(tomb_key=b"\0" * 32, keep_s=0.0)), Hub(),
                   emit=lambda _: None, clock=clock)

    # --- from the event flow ------------------------------------------------------------

    def on_processed(self, drafts: Sequence[ev.EventDraft]) -> None:
        """Every batch the personal service processed (after redemption and stitching).
        Never raises: a screen bug must not cost the batch its way to the intake."""
        try:
            self._publish(self.state.feed(drafts))
        except Exception as exc:  # a bug: counted, logged once, the flow goes on
            self.errors_total += 1
            self._warn(f"feed:{type(exc).__name__}", "staff screens: a batch could not "
                       "be applied: %s: %s", type(exc).__name__, exc)

    def on_registry_changed(self) -> None:
        """A customers command was applied: profiles, consents and pickups may differ."""
        self._publish(self.state.refresh())

    def forget(self, customers: Sequence[str]) -> None:
        """staff_view withdrawn, or erasure: off every screen now, out of every cache."""
        names = set(customers)
        changed = self.state.forget(names)
        for key in [k for k in self._seen if k[1] in names]:
            del self._seen[key]
        # every screen recomputes: a floor or lane view may show them by a path the
        # state did not flag (a profile read at the last frame)
        self._publish(changed | self.state.refresh())

    def snapshot(self) -> ScreensStatus:
        """Counts only (the status, /metrics). The hub's other topics are the app
        channel's (``customer:``)."""
        streams = self.hub.subscribers() - self.hub.subscribers_under("customer:")
        return ScreensStatus(subscribers=streams, published_total=self.published_total,
                             accesses_total=self.accesses_total,
                             errors_total=self.errors_total)

    # --- for the routes -----------------------------------------------------------------

    def lane(self, lane: str, role: StaffRole, session: str) -> LaneScreen:
        """The lane's screen for this role; an access is logged if it shows anything
        personal."""
        view, who, shown = self.state.lane_view(lane, role, self._offers)
        self._lane_access(lane, role, session, who, shown)
        return view

    def floor(self, role: StaffRole, session: str) -> FloorScreen:
        view, access = self.state.floor_view(role)
        self._floor_access(role, session, access)
        return view

    def lane_frame(self, lane: str, role: StaffRole, session: str,
                   notice: Message | None) -> str:
        """The lane's screen as a stream frame's JSON. For a change ``notice``, rendered
        once per (lane, role) and the same text sent to every screen of that lane and
        role (50 screens on a lane rendered it 50 times: ~0.17 ms each, on the loop);
        ``None`` (a stream's first frame): rendered now. The access is logged per
        session as in :meth:`lane`."""
        key = ("lane", lane, role)
        hit = self._frames.get(key)
        if notice is not None and hit is not None and hit[0] is notice:
            _, text, who, shown = hit
        else:
            view, who, shown = self.state.lane_view(lane, role, self._offers)
            text = view.model_dump_json()
            if notice is not None:
                self._frames[key] = (notice, text, who, shown)
        self._lane_access(lane, role, session, who, shown)
        return text

    def floor_frame(self, role: StaffRole, session: str, notice: Message | None) -> str:
        """The floor's screen as a stream frame's JSON, shared per (change, role) like
        :meth:`lane_frame`."""
        key = ("floor", "", role)
        hit = self._floor_frames.get(key)
        if notice is not None and hit is not None and hit[0] is notice:
            _, text, access = hit
        else:
            view, access = self.state.floor_view(role)
            text = view.model_dump_json()
            if notice is not None:
                self._floor_frames[key] = (notice, text, access)
        self._floor_access(role, session, access)
        return text

    # --- inside ---------------------------------------------------------------------------

    def _lane_access(self, lane: str, role: StaffRole, session: str, who: Who,
                     shown: Sequence[ScreenField]) -> None:
        if shown and who.customer is not None:
            self._access(lane, role, session, customer=who.customer,
                         transaction=who.transaction, shown=shown)

    def _floor_access(self, role: StaffRole, session: str,
                      access: Sequence[tuple[str, Sequence[ScreenField]]]) -> None:
        for customer, shown in access:
            self._access(None, role, session, customer=customer, transaction=None,
                         shown=shown)

    def _offers(self, customer: str) -> list[ScreenOffer]:
        engine = self.engine
        if engine is None:
            return []
        now = self._clock()
        out = []
        for h in sorted(engine.held(customer, now), key=lambda h: h.expires_at):
            prepared = engine.campaigns.get(h.campaign)
            if prepared is None:
                continue
            camp = prepared.campaign
            content = next((v.content for v in camp.variants if v.id == h.variant),
                           camp.content)
            out.append(ScreenOffer(title=content.title, expires_at=ev.rfc3339(h.expires_at)))
        return out

    def _access(self, lane: str | None, role: StaffRole, session: str, *, customer: str,
                transaction: str | None, shown: Sequence[ScreenField]) -> None:
        key = (session, customer, transaction if lane is not None else None)
        if key in self._seen:
            self._seen.move_to_end(key)
            return
        self._seen[key] = None
        while len(self._seen) > MAX_ACCESS_KEYS:
            self._seen.popitem(last=False)
        self.accesses_total += 1
        self._emit([viewed_draft(lane=lane, role=role, session=session, customer=customer,
                                 fields=shown, at=self._clock())])

    def _publish(self, topics: Iterable[str]) -> None:
        for topic in topics:
            if self.hub.subscribers(topic):
                self.hub.publish(topic, Message("floor" if topic == "floor" else "lane",
                                                {"topic": topic}))
                self.published_total += 1
