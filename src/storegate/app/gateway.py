"""The composition root: builds the gateway's parts from one Config and runs them.

Not every adapter is constructed here. This module builds the outbox, identity store,
command ledger, seal key and publisher; ``app/presence.py`` (``build_sources``: bleak,
scanner nodes, the simulated store) and ``app/pos.py`` (``PosService``, built by
``preflight``: serial taps, the simulated lane) build the sources it starts and stops.
The CLI builds the same sources for ``capture``/``pos capture`` and opens read-only
``OutboxReader``s; the publisher opens its own reader and paho client on its thread.
Adapters never import app/ (``tests/test_layers.py``). The lifecycle:

    start     open the outbox (validate, lock, recover), start the MQTT publisher
    run       sources hand events to the intake, which commits them to the outbox (or
              holds and retries them while it refuses); the publisher drains it
    SIGTERM   stop the sources (lanes flush receipts waiting for an idle gap) -> commit
              what the intake holds -> stop accepting ->
              drain to the broker within storage.shutdown_drain_s ->
              publish the death certificate -> close the database cleanly
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from zoneinfo import ZoneInfo

from storegate import __version__
from storegate.adapters import gateway_key, status_file
from storegate.adapters.app_inbox import AppInbox
from storegate.adapters.command_ledger import CommandLedger
from storegate.adapters.identities_sqlite import IdentityStore
from storegate.adapters.mqtt_client import MqttSettings, TlsSettings
from storegate.adapters.mqtt_paho import MqttPublisher, StatusMessages
from storegate.adapters.outbox import Accepted, Outbox, OutboxReader
from storegate.adapters.plumbing import sleep_until_stopped
from storegate.adapters.registry_sqlite import RegistrySqlite
from storegate.adapters.sd_notify import Notifier
from storegate.app import collector
from storegate.app.app_channel import AppChannel
from storegate.app.checkin import CheckinService
from storegate.app.commands import CommandHandler, Done
from storegate.app.erasure import ErasureTargets, erase
from storegate.app.http.hub import Hub
from storegate.app.intake import Intake
from storegate.app.personal import PersonalService, apply_in_slices, campaigns_path
from storegate.app.pos import PosService
from storegate.app.preflight import load_start_files
from storegate.app.presence import PresenceService, build_sources, presence_enabled
from storegate.app.screens import ScreenService
from storegate.app.sim_store import demo_records
from storegate.app.status import (
    CommandsStatus,
    GatewayStatusView,
    OutboxStatus,
    PendingAcceptStatus,
)
from storegate.config import Config
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core import seal
from storegate.core.backoff import Backoff
from storegate.core.ble.eid import Identity
from storegate.core.clock import clock_problem
from storegate.core.commands import IdentityChange
from storegate.core.ids import Uuid7Generator
from storegate.core.personal.campaigns import CampaignsCommand
from storegate.core.personal.erasure import EraseCommand
from storegate.core.personal.registry import CustomersChange, Registry, RegistryDelta
from storegate.core.personal.screens import ScreenState
from storegate.core.personal.stitching import Stitcher
from storegate.core.retention import RetentionBudget
from storegate.core.topics import Topics
from storegate.core.trust import TrustPolicy, Verified, load_public_key
from storegate.errors import ClockError, OutboxError

log = logging.getLogger(__name__)

STATUS_FILE_INTERVAL_S = 2.0
CONSENT_WAIT_S = 10.0  # at shutdown, for a consent change being applied (100k: ~3 s)
# After the stop, the gateway's tasks end on their own (the longest: the HTTP server's
# graceful 5 s, a lane's quiet 2.5 s plus its taps' joins); one still running then is
# cancelled (:func:`_ended_or_cancelled`).
STOP_TASKS_S = 15.0
# A removed customer's tombstone outlives any command still in flight (trust.max_age_s
# plus skew) by a day: an older upsert can never bring them back.
TOMBSTONE_EXTRA_S = 86_400.0


def mqtt_settings(config: Config) -> MqttSettings:
    m = config.mqtt
    tls = None
    if m.tls is not None:
        tls = TlsSettings(m.tls.ca_file, m.tls.cert_file, m.tls.key_file, m.tls.insecure)
    return MqttSettings(
        host=m.host,
        port=m.port,
        client_id=config.client_id,
        protocol=m.protocol,
        username=m.username,
        password=m.password.get_secret_value() if m.password else None,
        keepalive_s=m.keepalive_s,
        session_expiry_s=m.session_expiry_s,
        window=m.max_inflight,
        connect_timeout_s=m.connect_timeout_s,
        backoff=Backoff(m.reconnect_min_s, m.reconnect_max_s),
        tls=tls,
    )


async def _ended_or_cancelled(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Every task ends on the stop event. One that does not (a lost wake-up: the app
    channel's writer once went idle for good when the stop came during a write) would
    keep the gateway from ever draining, until SIGKILL: after ``timeout_s`` it is
    cancelled and named in the log, and the shutdown goes on."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        name = getattr(task.get_coro(), "__qualname__", task.get_name())
        log.error("stopping: %s did not end within %g s of the stop; cancelled", name,
                  timeout_s)
        task.cancel()


class Gateway:
    """One store gateway: outbox, publisher and sources, wired from config."""

    def __init__(self, config: Config, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.topics = Topics(config.store_id, config.gateway_id)
        self._wall = wall_clock
        self.started_at = wall_clock()
        self._ids = Uuid7Generator()
        r = config.storage.retention
        self.outbox = Outbox(
            config.storage.path,
            source=self.topics.source,
            topic_for=lambda t: self.topics.events(t.kind),
            budget=RetentionBudget(r.max_rows, r.max_bytes, r.max_age_s),
            clock=wall_clock,
            synchronous=config.storage.synchronous,
            replay_window_s=config.storage.replay_window_s,
            on_commit=self._on_commit,
        )
        # what the sources hand over is committed, or held and retried: never dropped
        self.intake = Intake(self.outbox)
        self.publisher: MqttPublisher | None = None
        self.commands: CommandHandler | None = None
        self._ledger: CommandLedger | None = None
        self.seal_key: str | None = None  # public, base64url; the private key stays on disk
        t = config.trust
        self._trust = TrustPolicy(
            {k.kid: load_public_key(k.public_key) for k in t.central_keys},
            t.max_age_s, t.max_future_s)
        self._reader: OutboxReader | None = None
        self.identities: IdentityStore | None = None
        # The customers central sent (core/personal/registry.py): every feature asks it
        # `allows(customer, purpose)`. Filled from its store at start; the key here is a
        # stand-in until then (the store keeps the real one).
        self.registry = Registry(tomb_key=os.urandom(32),
                                 keep_s=t.max_age_s + t.max_future_s + TOMBSTONE_EXTRA_S)
        self._registry_store: RegistrySqlite | None = None
        self.presence: PresenceService | None = None
        # Redemption, stitching and offers between the sources and the intake
        # (app/personal.py); built at start (it opens the ledger).
        self.personal: PersonalService | None = None
        # The customer app channel (issue 12): the app inbox, fed from the
        # personalisation flow, pushed live through the hub (which the staff screens
        # share); built at start when the HTTP surface is on (or its file is left).
        self.hub = Hub()
        self.app_channel: AppChannel | None = None
        # The staff screens (app/screens.py): who is at each lane, pickups on the floor.
        self.screens: ScreenService | None = None
        # Zone-poster check-ins (app/checkin.py), when [checkin] is enabled.
        self.checkin: CheckinService | None = None
        # How `run` loaded this config (the CLI sets it): the admin API's config reload
        # reads it again the same way (app/http/ops.py reload_config).
        self.config_loader: Callable[[], Config] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consent_tasks: set[asyncio.Task[None]] = set()
        self._consent_lock = asyncio.Lock()
        self.state = "created"
        # Every file the config names (registry, beacons, receipt templates, TLS) is
        # read now, by the function `config check` runs too: a broken one stops the
        # start with a clear error, before anything is opened.
        files = load_start_files(config, submit=self._from_sources, wall_clock=wall_clock)
        self._registry: list[Identity] = files.registry
        self._beacons = files.beacons
        self.pos: PosService | None = files.pos
        self._campaigns = files.campaigns
        for warning in files.warnings:
            log.warning("%s", warning)

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Open storage and start publishing. Raises StoregateError subclasses."""
        problem = clock_problem(self._wall())  # a Pi before time sync: refused loudly
        if problem is not None:
            log.error("%s", problem)
            raise ClockError(problem)
        self.outbox.open()
        try:
            self.identities = IdentityStore(self.config.identities_path)
            self._load_registry()
            self.personal = PersonalService.build(
                self.config, self.registry, stitcher=Stitcher(
                    self.config.stitching.settings(), self.config.lane_checkout_zones(),
                    self.registry.customer_of_loyalty),
                emit=self._personal_out, file_campaigns=self._campaigns,
                wall_clock=self._wall)
            self._build_app_channel(self.personal)
            self._build_screens(self.personal)
            if self.config.checkin.enabled:  # makes the poster key on first start
                self.checkin = CheckinService.build(
                    self.config, registry=self.registry, submit=self._from_sources,
                    pipeline=lambda: self.presence.pipeline if self.presence else None,
                    wall_clock=self._wall)
            key = gateway_key.load_or_create(self.config.seal_key_path)
            self.seal_key = seal.public_text(key.public_key())
            t = self.config.trust
            self._ledger = CommandLedger(self.config.commands_path,
                                         keep_s=t.max_age_s + t.max_future_s)
            self.commands = CommandHandler(
                store_id=self.config.store_id, gateway_id=self.config.gateway_id,
                policy=self._trust, max_bytes=t.max_command_bytes, outbox=self.outbox,
                submit=self._submit, ledger=self._ledger, seal_key=key, resend=self._resend,
                identities=self._on_identities, wall_clock=self._wall,
                handlers={"customers": self._on_customers,
                          "campaigns": self._on_campaigns,
                          "erase": self._on_erase})
            self.commands.start()
            self._reader = OutboxReader(self.config.storage.path)
            self.publisher = MqttPublisher(
                mqtt_settings(self.config),
                outbox_path=self.config.storage.path,
                ack=self.outbox.ack,
                status=StatusMessages(
                    topic=self.topics.status,
                    birth=lambda: self._status("online", "started"),
                    will=lambda: self._status("offline", "connection-lost"),
                    death=lambda: self._status("offline", "shutdown"),
                ),
                subscriptions=(self.topics.store_commands, self.topics.central_commands),
                on_command=self.commands,
                wall_clock=self._wall,
            )
            self.publisher.start(self.outbox.last_sequence)
        except BaseException:
            self._close_stores()
            self.outbox.close()
            raise
        self.state = "running"
        log.info(
            "gateway %s/%s started (session %d, outbox %s, %d pending)",
            self.config.store_id, self.config.gateway_id, self.outbox.session,
            self.config.storage.path, self.outbox.depth,
        )

    def stop(self) -> bool:
        """Graceful stop; returns True if the outbox was fully drained to the broker."""
        if self.state != "running":
            return False
        self.state = "stopping"
        if self.commands is not None:
            self.commands.stop()  # normally stopped already, before the loop let go
        self.outbox.stop_accepting()
        drained = False
        if self.publisher is not None:
            drained = self.publisher.stop(self.config.storage.shutdown_drain_s)
        self.write_status()
        self.outbox.close()
        if self._reader is not None:
            self._reader.close()
        self._close_stores()
        self.state = "stopped"
        status_file.remove(self.config.status_path)
        # "Drained" means the pending set is empty: the outbox, closed now with every
        # acknowledgement committed, has the last word over the publisher's own account.
        left = self.outbox.depth
        if drained and left:
            log.error("the publisher reported drained but %d event(s) are still pending in "
                      "the outbox; they are sent after the next start", left)
            drained = False
        log.info("gateway stopped (%s, %d event(s) left in the outbox)",
                 "drained" if drained else "not drained", left)
        return drained

    def _close_stores(self) -> None:
        if self.identities is not None:
            self.identities.close()
        if self._registry_store is not None:
            self._registry_store.close()
        if self.personal is not None:
            self.personal.close()
        if self.app_channel is not None:
            self.app_channel.close()
        if self._ledger is not None:
            self._ledger.close()

    def _on_identities(self, cmd: IdentityChange, done: Done) -> None:
        """On the command thread: hand the consent change to the event loop."""
        loop = self._loop
        if loop is None:  # stopping: not applied, so not recorded; central sends it again
            log.warning("identities command %s arrived while stopping; not applied",
                        cmd.command_id)
            done(False)
            return
        loop.call_soon_threadsafe(self._spawn, lambda: self._apply_identities(cmd, done))

    def _spawn(self, apply: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(apply())
        self._consent_tasks.add(task)  # a reference, until it is done
        task.add_done_callback(self._consent_tasks.discard)

    async def _apply_identities(self, cmd: IdentityChange, done: Done) -> None:
        """One consent change at a time, in arrival order (presence has its own lock;
        the store-only path needs this one: one SQLite connection, one transaction)."""
        async with self._consent_lock:
            applied = await self._apply_one(cmd)
        # Recorded only now, so a change that did not happen can be sent again as is.
        await asyncio.to_thread(done, applied)

    def _not_enrollable(self, identities: Iterable[Identity]) -> set[str]:
        """The customers of these identities presence must not enrol: the registry
        knows them without presence consent, or removed or erased them."""
        reg = self.registry
        return {i.customer for i in identities
                if (i.customer in reg and not reg.allows(i.customer, "presence"))
                or reg.tombstone_of(i.customer) is not None}

    def _file_identities(self) -> list[Identity]:
        """The config's registry file (presence.identities_file), by the rule the
        identities command follows: read at every start, it must not enrol a customer
        who withdrew presence consent or was erased since the file was written."""
        refused = self._not_enrollable(self._registry)
        if refused:
            log.info("presence.identities_file: %d customer(s) without presence consent "
                     "in the registry, or removed or erased there, not enrolled",
                     len(refused))
        return [i for i in self._registry if i.customer not in refused]

    async def _apply_one(self, cmd: IdentityChange) -> bool:
        error = None
        # Consent is decided in one place: a customer the registry knows without presence
        # consent is not enrolled by the older identities command either, nor one it
        # removed or erased (a tombstone outlives any command signed before it: an
        # identities command still in the broker cannot bring an erased customer back).
        refused = self._not_enrollable(cmd.identities)
        if refused:
            log.info("identities: %d customer(s) without presence consent in the registry, "
                     "or removed or erased there, not enrolled", len(refused))
            cmd = dataclasses.replace(cmd, identities=tuple(
                i for i in cmd.identities if i.customer not in refused))
        try:
            if self.presence is not None:
                with collector.paused():  # 100,000 identities: see app/collector.py
                    await self.presence.apply_identities(cmd)
            elif self.identities is not None:  # no presence here: keep the copy current
                await asyncio.to_thread(self.identities.apply, cmd.op, list(cmd.identities),
                                        list(cmd.customers))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("identities command %s (request %s) failed", cmd.op, cmd.request_id)
        enrolled = 0
        if self.presence is not None:
            enrolled = len(self.presence.pipeline.resolver)
        elif self.identities is not None:
            with contextlib.suppress(Exception):
                enrolled = len(self.identities)
        data = p.IdentitiesApplied(
            request_id=cmd.request_id, command_id=cmd.command_id, op=cmd.op,
            applied=error is None, error=error, received=cmd.received, enrolled=enrolled)
        self._submit([ev.EventDraft(ev.GATEWAY_IDENTITIES_APPLIED,
                                    f"gateway/{self.config.gateway_id}", self._wall(), data)])
        return error is None

    # --- the customer registry ------------------------------------------------------

    def _load_registry(self) -> None:
        store = RegistrySqlite(self.config.registry_path)
        self._registry_store = store
        loaded = store.load()
        if loaded.skipped:
            log.warning("registry: %d stored customer record(s) out of bounds skipped (the "
                        "next full sync from central replaces them)", loaded.skipped)
        self.registry.restore(loaded.records, loaded.tombstones, tomb_key=store.tomb_key())
        if loaded.records:
            log.info("registry: %d customer(s) known", len(self.registry))

    def _on_customers(self, change: object, checked: Verified, done: Done) -> None:
        """On the command thread: hand the customers change to the event loop."""
        loop = self._loop
        if loop is None or not isinstance(change, CustomersChange):
            log.warning("customers command %s arrived while stopping; not applied",
                        checked.command_id)
            done(False)
            return
        loop.call_soon_threadsafe(self._spawn, lambda: self._apply_customers(change, done))

    async def _apply_customers(self, change: CustomersChange, done: Done) -> None:
        """In arrival order with the identities commands (one consent lock)."""
        async with self._consent_lock:
            applied = await self._apply_customers_one(change)
        await asyncio.to_thread(done, applied)  # recorded only now, as identities

    async def _apply_customers_one(self, change: CustomersChange) -> bool:
        """Memory first (``allows`` answers at once, withdrawn keys leave the resolver
        before the disk), then the identity store, then the registry's own file. If a
        write fails, memory goes back to what the registry file says and the answer says
        so: central's resend then finds nothing stale and applies it again."""
        error = None
        delta = RegistryDelta(self._wall())
        store = self._registry_store
        try:
            if store is not None:
                with collector.paused():  # 100,000 records: see app/collector.py
                    delta = await apply_in_slices(self.registry, change, self._wall())
                if self.app_channel is not None and delta.marketing_withdrawn:
                    # their offers and tokens read out to no phone from now (erase below)
                    self.app_channel.withhold(delta.marketing_withdrawn)
                await self._follow_consent(change, delta)
                if self.personal is not None:  # offers revoked, stitching forgotten
                    await self.personal.follow(delta)
                if self.app_channel is not None and delta.marketing_withdrawn:
                    # revoked offers leave the phones' inbox too (a till refuses them)
                    await self.app_channel.erase(delta.marketing_withdrawn)
                await asyncio.to_thread(store.write, delta)
            else:  # stopped under it: nothing changed
                error = "the registry store is closed"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("customers command %s (request %s) failed", change.op,
                          change.request_id)
            if store is not None:  # memory back to what the registry file says
                with contextlib.suppress(Exception):
                    loaded, key = await asyncio.to_thread(
                        lambda: (store.load(), store.tomb_key()))
                    self.registry.restore(loaded.records, loaded.tombstones, tomb_key=key)
        if error is not None:
            delta = RegistryDelta(delta.at)
        else:
            log.info("customers %s applied (command %s): %d applied, %d stale, %d removed, "
                     "%d known", change.op, change.command_id, delta.applied, delta.stale,
                     delta.removed, len(self.registry))
        data = p.CustomersApplied(
            request_id=change.request_id, command_id=change.command_id, op=change.op,
            applied=error is None, error=error, received=change.received,
            stale=delta.stale, removed=delta.removed,
            known=len(self.registry), enrolled=self._enrolled())
        self._submit([ev.EventDraft(ev.GATEWAY_CUSTOMERS_APPLIED,
                                    f"gateway/{self.config.gateway_id}", self._wall(), data)])
        return error is None

    async def _follow_consent(self, change: CustomersChange, delta: RegistryDelta) -> None:
        """Keys and tracking follow the registry: withdrawals first (privacy), then
        enrolments; the presence service's own path (memory, then disk off the loop)."""
        if self.checkin is not None and delta.withdraw:  # their recent check-ins too
            self.checkin.forget(set(delta.withdraw))
        steps = [IdentityChange("remove", (), delta.withdraw, change.request_id,
                                change.command_id),
                 IdentityChange("upsert", delta.enroll, (), change.request_id,
                                change.command_id)]
        for step in steps:
            if not step.received:
                continue
            if self.presence is not None:
                with collector.paused():  # a large sync: see app/collector.py
                    await self.presence.apply_identities(step)
            elif self.identities is not None:
                await asyncio.to_thread(self.identities.apply, step.op,
                                        list(step.identities), list(step.customers))

    def _enrolled(self) -> int:
        if self.presence is not None:
            return len(self.presence.pipeline.resolver)
        if self.identities is not None:
            with contextlib.suppress(Exception):
                return len(self.identities)
        return 0

    def _from_sources(self, drafts: list[ev.EventDraft]) -> None:
        """Presence and the lanes: through personalisation (redemption, stitching,
        offers) to the intake. Commands' answers go to the intake directly."""
        if self.personal is not None:
            self.personal.submit(drafts)
        else:
            self._submit(drafts)

    def _enroll_local(self, identities: list[Identity], now: float) -> None:
        """The simulator's app users: enrolled for presence and known to the registry
        with their consents (as central would send them), neither persisted."""
        if self.presence is not None:
            self.presence.enroll(identities, now)
        if self.config.sources.simulator.registry_from_central:
            return  # central sends their records (the demo enrolled them there)
        self.registry.apply(CustomersChange("upsert", tuple(demo_records(identities, now)),
                                            {}, (), None), now)

    # --- campaigns -------------------------------------------------------------------

    def _on_campaigns(self, cmd: object, checked: Verified, done: Done) -> None:
        """On the command thread: hand the campaigns change to the event loop."""
        loop = self._loop
        if loop is None or not isinstance(cmd, CampaignsCommand) or self.personal is None:
            log.warning("campaigns command %s arrived while stopping; not applied",
                        checked.command_id)
            done(False)
            return
        loop.call_soon_threadsafe(
            self._spawn, lambda: self._apply_campaigns(cmd, checked.command_id, done))

    async def _apply_campaigns(self, cmd: CampaignsCommand, command_id: str | None,
                               done: Done) -> None:
        """Applied, saved, answered; the command id recorded only once applied."""
        personal = self.personal
        error = None if personal is not None else "the personalisation service is stopped"
        stale = removed = 0
        try:
            if personal is not None:
                result = await personal.apply_campaigns(cmd)
                stale, removed = result.stale, result.removed
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.exception("campaigns command %s (request %s) failed", cmd.op, cmd.request_id)
        active = len(personal.engine.campaigns) if personal is not None else 0
        if error is None:
            log.info("campaigns %s applied (command %s): %d stale, %d removed, %d active",
                     cmd.op, command_id, stale, removed, active)
        data = p.CampaignsApplied(
            request_id=cmd.request_id, command_id=command_id, op=cmd.op,
            applied=error is None, error=error, stale=stale, removed=removed, active=active)
        self._submit([ev.EventDraft(ev.GATEWAY_CAMPAIGNS_APPLIED,
                                    f"gateway/{self.config.gateway_id}", self._wall(), data)])
        await asyncio.to_thread(done, error is None)

    # --- erasure (app/erasure.py) -----------------------------------------------------

    def _on_erase(self, cmd: object, checked: Verified, done: Done) -> None:
        """On the command thread: hand the erasure to the event loop."""
        loop = self._loop
        if loop is None or not isinstance(cmd, EraseCommand):
            log.warning("erase command %s arrived while stopping; not applied",
                        checked.command_id)
            done(False)
            return
        cid = checked.command_id
        loop.call_soon_threadsafe(self._spawn, lambda: self._apply_erase(cmd, cid, done))

    async def _apply_erase(self, cmd: EraseCommand, command_id: str | None,
                           done: Done) -> None:
        """Under the consent lock: no customers or identities change runs beside it (one
        could enrol a customer being erased). Answered with counts only; recorded only
        if every store was reached, so central's resend erases what was missed."""
        async with self._consent_lock:
            targets = ErasureTargets(
                registry=self.registry, registry_store=self._registry_store,
                identities=self.identities, outbox=self.outbox,
                pipeline=self.presence.pipeline if self.presence is not None else None,
                personal=self.personal, ledger_path=self.config.redemption_path,
                # no customer in these, but every file the box writes is rebuilt
                files=(self.config.commands_path, campaigns_path(self.config)),
                app_channel=self.app_channel, screens=self.screens, intake=self.intake)
            erased = set(cmd.customers)
            # identities the registry file of the config enrolled: not again this run
            self._registry = [i for i in self._registry if i.customer not in erased]
            with collector.paused():  # up to 10,000 customers: see app/collector.py
                counts = await erase(cmd.customers, targets, self._wall(),
                                     loyalty_ids=cmd.loyalty_ids)
            if self.checkin is not None:  # the repeat rule's memory of them
                self.checkin.forget(erased)
        data = counts.answer(cmd.request_id, command_id)
        log.info("erase applied=%s (command %s): %d customer(s), %d record(s), %d key(s), "
                 "%d event(s) redacted, %d file(s) rewritten", data.applied, command_id,
                 data.customers, data.registry_records, data.identity_keys,
                 data.outbox_unsent_redacted + data.outbox_replay_redacted,
                 data.files_rewritten)
        self._submit([ev.EventDraft(ev.GATEWAY_ERASED, f"gateway/{self.config.gateway_id}",
                                    self._wall(), data)])
        await asyncio.to_thread(done, data.applied)

    # --- the customer app channel (app/app_channel.py) ---------------------------------

    def _build_app_channel(self, personal: PersonalService) -> None:
        """The app inbox, fed only when the HTTP surface serves it; a file left by an
        earlier run with HTTP on is still opened, so erasure reaches it."""
        path = self.config.inbox_path
        if not self.config.http.enabled and not path.exists():
            return
        self.app_channel = AppChannel(AppInbox(path), self.hub, self.registry,
                                      tz=ZoneInfo(self.config.offers.timezone),
                                      wall_clock=self._wall)
        if self.config.http.enabled:
            personal.on_offer = self.app_channel.on_offer

    def _build_screens(self, personal: PersonalService) -> None:
        """The staff screens, fed by the personal service (only with the HTTP surface:
        nobody else reads them)."""
        if not self.config.http.enabled:
            return
        state = ScreenState(self.registry, lanes=[lane.id for lane in self.config.pos.lanes],
                            lane_zones=self.config.lane_checkout_zones())
        self.screens = screens = ScreenService(state, self.hub, emit=self._submit,
                                               clock=self._wall, engine=personal.engine)
        personal.on_processed = screens.on_processed
        personal.on_registry_changed = screens.on_registry_changed
        personal.on_staff_withdrawn = screens.forget

    def _personal_out(self, drafts: list[ev.EventDraft]) -> None:
        """What personalisation emits: to the app channel (redemption states, pickup
        notices; it only queues), then the intake."""
        if self.app_channel is not None and self.config.http.enabled:
            self.app_channel.observe(drafts)
        self._submit(drafts)

    def _submit(self, drafts: list[ev.EventDraft]) -> None:
        """Events from the sources into the outbox, without waiting for the commit;
        refused ones (disk full) are held and retried by the intake."""
        self.intake.submit(drafts)

    def _resend(self, sequences: list[int]) -> None:
        if self.publisher is not None:
            self.publisher.resend(sequences)

    def _on_commit(self, sequence: int) -> None:
        if self.publisher is not None:
            self.publisher.notify_committed(sequence)

    # --- events --------------------------------------------------------------------

    async def accept(self, draft: ev.EventDraft) -> Accepted:
        return await self.outbox.accept(draft)

    def _status(self, state: str, reason: str) -> bytes:
        now = self._wall()
        data = p.GatewayStatus(
            state=state,  # type: ignore[arg-type]
            session=max(self.outbox.session, 1),
            version=__version__,
            started_at=ev.rfc3339(self.started_at),
            reason=reason,  # type: ignore[arg-type]
            seal_key=self.seal_key,
            offer_key=self.personal.offer_key if self.personal is not None else None,
            last_sequence=self.outbox.last_sequence,
        )
        draft = ev.EventDraft(ev.GATEWAY_STATUS, f"gateway/{self.config.gateway_id}", now, data)
        event_id = self._ids.next(int(now * 1000), os.urandom(8))
        return ev.encode(ev.envelope(draft, event_id=event_id, source=self.topics.source,
                                     sequence=None))

    def telemetry(self) -> p.GatewayTelemetry:
        pub = self.publisher.snapshot() if self.publisher else None
        oldest = None
        dropped = 0
        if self._reader is not None:
            stats = self._reader.stats()
            dropped = stats.dropped_total
            if stats.oldest_accepted_at is not None:
                oldest = max(self._wall() - stats.oldest_accepted_at, 0.0)
        return p.GatewayTelemetry(
            last_sequence=self.outbox.last_sequence,
            outbox_depth=self.outbox.depth,
            pending_accept=self.intake.pending,
            oldest_pending_age_s=oldest,
            dropped_total=dropped,
            published_total=pub.published_total if pub else 0,
            reconnects_total=pub.reconnects_total if pub else 0,
            refused_total=pub.rejected_total if pub else 0,
            refused_held=pub.refused_held if pub else 0,
            commands_rejected_total=self.commands.rejected_total if self.commands else 0,
            presence=self.presence.health() if self.presence else None,
            lanes=self.pos.health() if self.pos else None,
            personal=self.personal.health() if self.personal else None,
        )

    # --- status --------------------------------------------------------------------

    def status(self) -> GatewayStatusView:
        """The typed status every surface reads (the status file, ``storegate status``)."""
        pub = self.publisher.snapshot() if self.publisher else None
        intake = self.intake
        return GatewayStatusView(
            pid=os.getpid(),
            state=self.state,
            store_id=self.config.store_id,
            gateway_id=self.config.gateway_id,
            version=__version__,
            session=self.outbox.session,
            started_at=self.started_at,
            updated_at=self._wall(),
            broker=pub,
            outbox=OutboxStatus(
                path=str(self.config.storage.path),
                accepted_total=self.outbox.accepted_total,
                failed_total=self.outbox.failed_total,
                last_error=self.outbox.last_error,
                depth=self.outbox.depth,
                last_sequence=self.outbox.last_sequence,
                pending_accept=PendingAcceptStatus(
                    pending=intake.pending, pending_purchases=intake.pending_purchases,
                    held_total=intake.held_total, dropped=intake.dropped,
                    accepted_after_hold_total=intake.accepted_after_hold_total),
            ),
            seal_key=self.seal_key,
            commands=None if self.commands is None else CommandsStatus(
                accepted_total=self.commands.accepted_total,
                rejected_total=self.commands.rejected_total,
                rejected_by_reason=dict(self.commands.rejected_by_reason),
                last_rejection=self.commands.last_rejection,
                central_keys=tuple(sorted(self._trust.keys)),
            ),
            presence=None if self.presence is None else self.presence.snapshot(),
            pos=None if self.pos is None else self.pos.snapshot(),
            personal=None if self.personal is None else self.personal.snapshot(),
            checkin=None if self.checkin is None else self.checkin.snapshot(),
            app_channel=None if self.app_channel is None else self.app_channel.snapshot(),
            screens=None if self.screens is None else self.screens.snapshot(),
        )

    def write_status(self) -> None:
        try:
            status_file.write(self.config.status_path, self.status().to_json())
        except OSError as exc:
            log.debug("cannot write status file: %s", exc)
        except Exception:  # e.g. a snapshot racing a change: the next write will do
            log.debug("status not written", exc_info=True)

    # --- run -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> bool:
        """Run until ``stop`` is set or SIGTERM/SIGINT arrives; returns drained flag."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        self._loop = loop
        self.intake.bind(loop)
        self.start()
        systemd = Notifier()  # Type=notify: READY, watchdog keep-alive, STOPPING
        systemd.ready(f"running; outbox {self.outbox.depth} pending")
        try:
            if (presence_enabled(self.config) or self.checkin is not None) \
                    and self.identities is not None:
                self.presence = PresenceService.build(
                    self.config, identities=self.identities, submit=self._from_sources,
                    extra=self._file_identities(), beacons=self._beacons,
                    wall_clock=self._wall)
                self.presence.sources = build_sources(
                    self.config, mqtt_settings(self.config), on_advert=self.presence.feed,
                    enroll=self._enroll_local, beacons=self._beacons)
            async with asyncio.TaskGroup() as tg:
                tasks: list[asyncio.Task[None]] = []

                def spawn(coro: Coroutine[Any, Any, None]) -> None:
                    tasks.append(tg.create_task(coro))

                if self.presence is not None:
                    spawn(self.presence.run(stop))
                if self.pos is not None:
                    spawn(self.pos.run(stop))
                if self.personal is not None:
                    spawn(self.personal.run(stop))
                if self.app_channel is not None and self.config.http.enabled:
                    spawn(self.app_channel.run(stop))
                spawn(self._status_loop(stop))
                spawn(self.intake.run(stop))
                spawn(collector.tend(stop))  # issue 12: short GC pauses
                spawn(systemd.keep_alive(stop))  # from this loop: it must turn
                if self.config.sources.telemetry.enabled:
                    spawn(self._telemetry_loop(stop))
                if self.config.http.enabled:  # the HTTP surface, in this loop (issue 12)
                    from storegate.app.http.server import serve  # noqa: PLC0415 - optional

                    spawn(serve(self, self.config.http, stop, clock=self._wall))
                    if self.config.http.demo_app_tokens:
                        h = self.config.http
                        log.info("demo app users (loopback only): %s://%s:%d/app/demo",
                                 "https" if h.tls else "http", h.host, h.port)
                await stop.wait()
                await _ended_or_cancelled(tasks, STOP_TASKS_S)
        finally:
            systemd.stopping("draining the outbox")
            log.info("stopping: no new events accepted; draining the outbox")
            if self.commands is not None:  # no command is checked (and burnt) from now on
                await asyncio.to_thread(self.commands.stop)
            self._loop = None  # a command handed over meanwhile is not applied (nor recorded)
            await asyncio.sleep(0)  # those already handed over start first...
            if self._consent_tasks:  # ...and finish, so the store is not closed under them
                await asyncio.wait(self._consent_tasks, timeout=CONSENT_WAIT_S)
            if self.personal is not None:  # what the lanes flushed, processed
                await self.personal.flush()
            if self.app_channel is not None:  # ...and sent to the inbox; streams end
                await self.app_channel.flush()
            self.hub.close_all()
            # The lanes flushed what waited for an idle gap as their task ended; what
            # is in flight or held is committed now, before the outbox stops accepting.
            await self.intake.drain(self.config.storage.shutdown_drain_s)
            drained = await asyncio.to_thread(self.stop)
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        return drained

    async def _status_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._write_status_off_loop()
            await sleep_until_stopped(stop, STATUS_FILE_INTERVAL_S)

    async def _write_status_off_loop(self) -> None:
        """The snapshot on the loop (it owns the state), the file in a worker thread:
        its create and rename wait for the file system's journal on a busy disk (py-spy
        on bench/bench_http.py's gateway: 180 ms of the loop in 40 s in the rename)."""
        try:
            data = self.status().to_json()
        except Exception:  # e.g. a snapshot racing a change: the next write will do
            log.debug("status not written", exc_info=True)
            return
        try:
            await asyncio.to_thread(status_file.write, self.config.status_path, data)
        except OSError as exc:
            log.debug("cannot write status file: %s", exc)

    async def _telemetry_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.sources.telemetry.interval_s
        while not stop.is_set():
            if await sleep_until_stopped(stop, interval):
                return
            try:
                draft = ev.EventDraft(
                    ev.GATEWAY_TELEMETRY, f"gateway/{self.config.gateway_id}", self._wall(),
                    self.telemetry(),
                )
                await self.accept(draft)
            except OutboxError as exc:  # disk full etc.: logged by the outbox; go on
                log.debug("telemetry not accepted: %s", exc)
            except Exception:  # a bug in a figure must not stop the gateway
                log.exception("telemetry failed; trying again in %g s", interval)
