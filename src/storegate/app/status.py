"""The running gateway's status, as typed values.

The gateway builds a :class:`GatewayStatusView` every few seconds and writes its
``asdict`` to the status file (``adapters/status_file.py``); ``storegate status``, which
runs in another process, parses that file back with :meth:`GatewayStatusView.from_json`
and renders the view. The HTTP ``/readyz`` and the Prometheus metrics read this same
model, so a counter is named once, here, and every surface shows the same number.

The file's JSON shape is a contract with operators' scripts (``storegate status --json``
prints it as it is): field names and order are the file's keys, and ``to_json`` gives
exactly ``dataclasses.asdict``. The parts an adapter reports about itself are that
adapter's own frozen dataclasses, each with its ``from_json``: the publisher's
(``PublisherStatus``, ``adapters/mqtt_paho.py``), an advert source's (``BleSourceStatus``,
``NodeSourceStatus``, ``SimSourceStatus``: a :data:`SourceStatus`, told apart in the file
by its ``kind``) and a serial tap's (``SerialTapStatus``). They are imported only when a
file is parsed, so ``storegate --help`` loads no adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # keeps ``storegate --help`` from importing adapters and presence
    from storegate.adapters.ble_bleak import BleSourceStatus
    from storegate.adapters.mqtt_nodes import NodeSourceStatus
    from storegate.adapters.mqtt_paho import PublisherStatus
    from storegate.adapters.serial_tap import SerialTapStatus
    from storegate.app.sim_store import SimSourceStatus
    from storegate.core.presence.calibration import Calibrator
    from storegate.core.presence.pipeline import PipelineCounters

    SourceStatus: TypeAlias = BleSourceStatus | NodeSourceStatus | SimSourceStatus


def _map(value: Any) -> dict[str, Any]:
    """A JSON object from the file, or an empty one (an older file may lack it)."""
    return dict(value) if isinstance(value, Mapping) else {}


def _sources(value: Any) -> tuple[SourceStatus, ...]:
    """The advert sources' statuses, each parsed by its own type (by its ``kind``); a
    kind this version does not know is left out."""
    from storegate.adapters.ble_bleak import BleSourceStatus  # noqa: PLC0415
    from storegate.adapters.mqtt_nodes import NodeSourceStatus  # noqa: PLC0415
    from storegate.app.sim_store import SimSourceStatus  # noqa: PLC0415

    parse: dict[str, Callable[[Mapping[str, Any]], SourceStatus]] = {
        "ble": BleSourceStatus.from_json, "scanner-nodes": NodeSourceStatus.from_json,
        "simulator": SimSourceStatus.from_json}
    out: list[SourceStatus] = []
    for d in value if isinstance(value, list | tuple) else ():
        of_kind = parse.get(str(d.get("kind"))) if isinstance(d, Mapping) else None
        if of_kind is not None:
            out.append(of_kind(d))
    return tuple(out)


def _tap(value: Any) -> SerialTapStatus | None:
    from storegate.adapters.serial_tap import SerialTapStatus  # noqa: PLC0415

    return SerialTapStatus.from_json(value) if isinstance(value, Mapping) else None


def _broker(value: Any) -> PublisherStatus | None:
    from storegate.adapters.mqtt_paho import PublisherStatus  # noqa: PLC0415

    return PublisherStatus.from_json(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True, slots=True)
class PendingAcceptStatus:
    """Events the intake holds in memory while the outbox refuses them."""

    pending: int
    pending_purchases: int
    held_total: int
    dropped: Mapping[str, int]  # by event type
    accepted_after_hold_total: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PendingAcceptStatus:
        return cls(pending=int(d.get("pending", 0)),
                   pending_purchases=int(d.get("pending_purchases", 0)),
                   held_total=int(d.get("held_total", 0)), dropped=_map(d.get("dropped")),
                   accepted_after_hold_total=int(d.get("accepted_after_hold_total", 0)))


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """What the running process knows of its outbox (the CLI reads depth and age from
    the database itself)."""

    path: str
    accepted_total: int
    failed_total: int
    last_error: str | None
    depth: int
    last_sequence: int
    pending_accept: PendingAcceptStatus

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OutboxStatus:
        return cls(path=str(d.get("path", "")), accepted_total=int(d.get("accepted_total", 0)),
                   failed_total=int(d.get("failed_total", 0)), last_error=d.get("last_error"),
                   depth=int(d.get("depth", 0)), last_sequence=int(d.get("last_sequence", 0)),
                   pending_accept=PendingAcceptStatus.from_json(_map(d.get("pending_accept"))))


@dataclass(frozen=True, slots=True)
class CommandsStatus:
    """Signed commands from central: what was applied and what was refused, and why."""

    accepted_total: int
    rejected_total: int
    rejected_by_reason: Mapping[str, int]
    last_rejection: str | None
    central_keys: tuple[str, ...]

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CommandsStatus:
        return cls(accepted_total=int(d.get("accepted_total", 0)),
                   rejected_total=int(d.get("rejected_total", 0)),
                   rejected_by_reason=_map(d.get("rejected_by_reason")),
                   last_rejection=d.get("last_rejection"),
                   central_keys=tuple(d.get("central_keys") or ()))


@dataclass(frozen=True, slots=True)
class PresenceCounters:
    """The presence pipeline's advert counters (``PipelineCounters``), as a value."""

    adverts: int
    resolved: int  # adverts of consenting customers
    unresolved_eid: int  # EID frames of nobody enrolled here
    anonymous: int  # everything else
    infrastructure: Mapping[str, int]  # adverts, by beacon kind
    unknown_scanner: int  # adverts from a scanner in no zone
    # adverts by scanner: the configured ones, every other name under "other" (bounded)
    by_scanner: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # visits of consenting customers by zone ("store": the store visit itself)
    visits_entered: Mapping[str, int] = dataclasses.field(default_factory=dict)
    visits_exited: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, c: PipelineCounters) -> PresenceCounters:
        return cls(adverts=c.adverts, resolved=c.resolved, unresolved_eid=c.unresolved_eid,
                   anonymous=c.anonymous, infrastructure=dict(c.infrastructure),
                   unknown_scanner=c.unknown_scanner, by_scanner=dict(c.by_scanner),
                   visits_entered=dict(c.visits_entered),
                   visits_exited=dict(c.visits_exited))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PresenceCounters:
        return cls(adverts=int(d.get("adverts", 0)), resolved=int(d.get("resolved", 0)),
                   unresolved_eid=int(d.get("unresolved_eid", 0)),
                   anonymous=int(d.get("anonymous", 0)),
                   infrastructure=_map(d.get("infrastructure")),
                   unknown_scanner=int(d.get("unknown_scanner", 0)),
                   by_scanner=_counts(d.get("by_scanner")),
                   visits_entered=_counts(d.get("visits_entered")),
                   visits_exited=_counts(d.get("visits_exited")))


def _floats(value: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in _map(value).items()}


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class CalibrationStatus:
    """The live fit of the store's radio model (core/presence/calibration.py)."""

    state: str  # no-plan | waiting | fitted
    fitted_at: float | None
    exponent: float | None
    exponent_se: float | None
    offsets_db: Mapping[str, float]  # per positioned scanner, mean zero
    powers_dbm: Mapping[str, float]  # per positioned beacon, RSSI at 1 m
    pairs: int
    samples: int
    censored_pairs: int  # heard near the scanner's floor: left out
    residual_rms_db: float | None
    downweighted_pairs: int
    flags: tuple[str, ...]
    uncalibrated: tuple[str, ...]  # scanners without a position
    fits_total: int

    @classmethod
    def of(cls, c: Calibrator) -> CalibrationStatus:
        f = c.fit
        return cls(state=f.state, fitted_at=f.fitted_at, exponent=f.exponent,
                   exponent_se=f.exponent_se, offsets_db=dict(f.offsets_db),
                   powers_dbm=dict(f.powers_dbm), pairs=f.pairs, samples=f.samples,
                   censored_pairs=c.censored_pairs, residual_rms_db=f.residual_rms_db,
                   downweighted_pairs=f.downweighted_pairs, flags=tuple(f.flags()),
                   uncalibrated=f.uncalibrated, fits_total=c.counters.fits)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CalibrationStatus:
        return cls(state=str(d.get("state", "")), fitted_at=_opt_float(d.get("fitted_at")),
                   exponent=_opt_float(d.get("exponent")),
                   exponent_se=_opt_float(d.get("exponent_se")),
                   offsets_db=_floats(d.get("offsets_db")),
                   powers_dbm=_floats(d.get("powers_dbm")), pairs=int(d.get("pairs", 0)),
                   samples=int(d.get("samples", 0)),
                   censored_pairs=int(d.get("censored_pairs", 0)),
                   residual_rms_db=_opt_float(d.get("residual_rms_db")),
                   downweighted_pairs=int(d.get("downweighted_pairs", 0)),
                   flags=tuple(str(x) for x in d.get("flags") or ()),
                   uncalibrated=tuple(str(x) for x in d.get("uncalibrated") or ()),
                   fits_total=int(d.get("fits_total", 0)))


@dataclass(frozen=True, slots=True)
class PresenceStatus:
    """Presence: who is enrolled and present, and each advert source's own snapshot."""

    enrolled: int
    tracked: int
    present: Mapping[str, int]  # by zone ("store": the whole store)
    counters: PresenceCounters
    beacons_last_heard: Mapping[str, float]
    commands_applied: int
    errors_total: int
    sources: tuple[SourceStatus, ...]  # each advert source's own status
    calibration: CalibrationStatus | None = None  # None: calibration off

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PresenceStatus:
        return cls(enrolled=int(d.get("enrolled", 0)), tracked=int(d.get("tracked", 0)),
                   present=_map(d.get("present")),
                   counters=PresenceCounters.from_json(_map(d.get("counters"))),
                   beacons_last_heard=_map(d.get("beacons_last_heard")),
                   commands_applied=int(d.get("commands_applied", 0)),
                   errors_total=int(d.get("errors_total", 0)),
                   sources=_sources(d.get("sources")),
                   calibration=CalibrationStatus.from_json(d["calibration"])
                   if isinstance(d.get("calibration"), Mapping) else None)


@dataclass(frozen=True, slots=True)
class PosDeviceStatus:
    """One device on a lane: its dialect's counters and its serial tap's status."""

    role: str
    dialect: str
    port: str
    frames_total: int
    rejected: Mapping[str, int]  # by reason
    tap: SerialTapStatus | None  # None: no tap (simulated)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PosDeviceStatus:
        return cls(role=str(d.get("role", "")), dialect=str(d.get("dialect", "")),
                   port=str(d.get("port", "")), frames_total=int(d.get("frames_total", 0)),
                   rejected=_map(d.get("rejected")), tap=_tap(d.get("tap")))


@dataclass(frozen=True, slots=True)
class LaneStatus:
    counters: Mapping[str, int]  # the lane assembler's, by what happened
    devices: tuple[PosDeviceStatus, ...]
    # share of the last receipts whose items add up (None: too few yet); the alert says
    # it fell (a layout change): core/pos/lane.py
    adds_up_share: float | None = None
    layout_alert: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LaneStatus:
        share = d.get("adds_up_share")
        return cls(counters=_map(d.get("counters")),
                   devices=tuple(PosDeviceStatus.from_json(_map(x))
                                 for x in d.get("devices") or ()),
                   adds_up_share=float(share) if share is not None else None,
                   layout_alert=bool(d.get("layout_alert", False)))


@dataclass(frozen=True, slots=True)
class PosStatus:
    lanes: Mapping[str, LaneStatus]  # by lane id
    errors_total: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PosStatus:
        return cls(lanes={k: LaneStatus.from_json(_map(v))
                          for k, v in _map(d.get("lanes")).items()},
                   errors_total=int(d.get("errors_total", 0)))


def _counts(value: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in _map(value).items()}


@dataclass(frozen=True, slots=True)
class PersonalStatus:
    """Offers, redemption and stitching (app/personal.py): counters since start, never
    an id."""

    customers_known: int
    campaigns_active: int
    offers_issued_total: int
    offers_suppressed_by_reason: Mapping[str, int]
    tokens_reserved_total: int
    tokens_redeemed_total: int
    tokens_released_total: int
    tokens_rejected_by_reason: Mapping[str, int]
    stitched_by_method: Mapping[str, int]  # purchases: loyalty, token, presence...
    ledger_errors_total: int
    queued_batches: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PersonalStatus:
        n = {k: int(d.get(k, 0)) for k in (
            "customers_known", "campaigns_active", "offers_issued_total",
            "tokens_reserved_total", "tokens_redeemed_total", "tokens_released_total",
            "ledger_errors_total", "queued_batches")}
        return cls(offers_suppressed_by_reason=_counts(d.get("offers_suppressed_by_reason")),
                   tokens_rejected_by_reason=_counts(d.get("tokens_rejected_by_reason")),
                   stitched_by_method=_counts(d.get("stitched_by_method")), **n)


@dataclass(frozen=True, slots=True)
class CheckinStatus:
    """Poster check-ins (app/checkin.py): counters since start, and the poster key's id
    and generations, so an operator sees which posters this gateway accepts."""

    accepted_total: int
    repeats_total: int  # the same poster again while its visit is open: no change
    rejected_by_reason: Mapping[str, int]
    poster_kid: str
    generation: int
    min_generation: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckinStatus:
        return cls(accepted_total=int(d.get("accepted_total", 0)),
                   repeats_total=int(d.get("repeats_total", 0)),
                   rejected_by_reason=_counts(d.get("rejected_by_reason")),
                   poster_kid=str(d.get("poster_kid", "")),
                   generation=int(d.get("generation", 0)),
                   min_generation=int(d.get("min_generation", 0)))


@dataclass(frozen=True, slots=True)
class AppChannelStatus:
    """The customer app channel (app/app_channel.py and the live hub): counters since
    start, never a customer."""

    inbox_messages: int  # held in the inbox file, as of its last write or prune
    queued: int  # waiting for the inbox writer
    published_total: int  # messages stored and pushed
    queued_dropped_total: int  # over the writer's queue bound
    errors_total: int
    streams: int  # phones connected now (SSE and WebSocket)
    hub_cut_off_total: int  # slow streams cut off (they resume from their cursor)
    staged_busy_total: int = 0  # staging found the inbox file locked: written in a thread

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AppChannelStatus:
        return cls(**{k: int(d.get(k, 0)) for k in (
            "inbox_messages", "queued", "published_total", "queued_dropped_total",
            "errors_total", "streams", "hub_cut_off_total", "staged_busy_total")})


@dataclass(frozen=True, slots=True)
class ScreensStatus:
    """The staff screens (app/screens.py): counters since start, never a customer."""

    subscribers: int  # till and floor screens connected now
    published_total: int  # screen updates pushed
    accesses_total: int  # profile views logged (storegate.staff.viewed)
    errors_total: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ScreensStatus:
        return cls(**{k: int(d.get(k, 0)) for k in (
            "subscribers", "published_total", "accesses_total", "errors_total")})


@dataclass(frozen=True, slots=True)
class GatewayStatusView:
    """Everything the running gateway reports about itself; ``None`` parts are not
    configured (or, for the broker, not started yet)."""

    pid: int
    state: str
    store_id: str
    gateway_id: str
    version: str
    session: int
    started_at: float
    updated_at: float
    broker: PublisherStatus | None
    outbox: OutboxStatus
    seal_key: str | None
    commands: CommandsStatus | None
    presence: PresenceStatus | None
    pos: PosStatus | None
    personal: PersonalStatus | None = None  # last: older files parse
    checkin: CheckinStatus | None = None  # poster check-ins, when enabled
    app_channel: AppChannelStatus | None = None  # with the HTTP surface
    screens: ScreensStatus | None = None  # with the HTTP surface

    def to_json(self) -> dict[str, Any]:
        """The status file's content (``storegate status --json`` shows it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> GatewayStatusView | None:
        """The view a status file holds, or None if there is none or it cannot be read
        as one (the CLI then says the gateway is not running). Fields a file written by
        an older version lacks take their empty value."""
        if not isinstance(data, Mapping):
            return None
        try:
            commands = data.get("commands")
            presence, pos = data.get("presence"), data.get("pos")
            return cls(
                pid=int(data.get("pid", 0)), state=str(data.get("state", "")),
                store_id=str(data.get("store_id", "")),
                gateway_id=str(data.get("gateway_id", "")),
                version=str(data.get("version", "")), session=int(data.get("session", 0)),
                started_at=float(data.get("started_at", 0)),
                updated_at=float(data.get("updated_at", 0)),
                broker=_broker(data.get("broker")),
                outbox=OutboxStatus.from_json(_map(data.get("outbox"))),
                seal_key=data.get("seal_key"),
                commands=CommandsStatus.from_json(commands)
                if isinstance(commands, Mapping) else None,
                presence=PresenceStatus.from_json(presence)
                if isinstance(presence, Mapping) else None,
                pos=PosStatus.from_json(pos) if isinstance(pos, Mapping) else None,
                personal=PersonalStatus.from_json(data["personal"])
                if isinstance(data.get("personal"), Mapping) else None,
                checkin=CheckinStatus.from_json(data["checkin"])
                if isinstance(data.get("checkin"), Mapping) else None,
                app_channel=AppChannelStatus.from_json(data["app_channel"])
                if isinstance(data.get("app_channel"), Mapping) else None,
                screens=ScreensStatus.from_json(data["screens"])
                if isinstance(data.get("screens"), Mapping) else None,
            )
        except (TypeError, ValueError):
            return None
