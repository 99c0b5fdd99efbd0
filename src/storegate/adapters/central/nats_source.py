"""Central's source on a fleet: the stores' events from a NATS JetStream stream, read
through one durable pull consumer that every central instance shares.

The stores' brokers bridge to the cluster's MQTT listener (deploy/nats/store-bridge.conf);
the cluster stores every event in a replicated stream (``STOREGATE_EVENTS``, R3). Each
central instance pulls bounded batches from the same durable consumer, so JetStream
hands each message to one instance at a time, and acknowledges a batch only after the
handler (central's ``Ingest.handle_many``) has returned, that is after the batch is
committed. A crash between the commit and the ack, or a lost ack, is a redelivery
after ``ack_wait``: the event id makes it a duplicate, never a second row. A failed
handler (the storage is down) acks nothing: the batch is handed back (``nak``) and
comes again.

Losing a cluster node: nats-py reconnects to another node from the server list
(forever, ``max_reconnect_attempts=-1``); the stream and the consumer are replicated
(R3), so they carry on once the survivors elect new leaders (a few seconds, during
which fetches fail and are retried with backoff).

MQTT topics become NATS subjects with ``/`` as ``.`` (and a ``.`` inside a level as
``//``): the handler receives the subject, which central's Ingest reads as the topic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from storegate.adapters.plumbing import describe_error, sleep_until_stopped
from storegate.core.backoff import Backoff
from storegate.errors import StoregateError
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

STREAM: Final = "STOREGATE_EVENTS"
# MQTT storegate/v1/<store>/<gateway>/events/<kind> and .../status, as NATS subjects.
SUBJECTS: Final = ("storegate.v1.*.*.events.>", "storegate.v1.*.*.status")
DURABLE: Final = "central"
REPLICAS: Final = 3
MAX_AGE_S: Final = 7 * 24 * 3600  # a week to replay from, or to add a second reader
DUPLICATE_WINDOW_S: Final = 120.0
MAX_MSG_BYTES: Final = 4 * 1024 * 1024  # the cluster's max_payload
PASSWORD_ENV: Final = "STOREGATE_NATS_PASSWORD"  # noqa: S105 (a variable name)

# A batch is one transaction in central's storage: 256 events is one commit of a few
# milliseconds, and bounds what a crashed instance leaves to redeliver.
BATCH: Final = 256
FETCH_WAIT_S: Final = 1.0
ACK_WAIT_S: Final = 30.0
# Per consumer, across every instance: what may be delivered and not yet acked.
MAX_ACK_PENDING: Final = 8192
NAK_DELAY_S: Final = 2.0
RETRY: Final = Backoff(min_s=0.2, max_s=5.0)

# (subject, payload) pairs and the time they were received -> anything; raising means
# nothing was committed.
Handler = Callable[[Sequence[tuple[str, bytes]], float], object]


class NatsSourceError(StoregateError):
    """The ``--source nats://...`` URL or the cluster's stream is unusable."""

    exit_code = 2


def nanos(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def events_stream(replicas: int = REPLICAS) -> StreamConfig:
    """The stream deploy/nats/events-stream.json describes (tests/test_fleet_config.py
    keeps the two equal)."""
    return StreamConfig(
        name=STREAM,
        description="Every store's events (MQTT storegate/v1/<store>/<gateway>/events/"
                    "<kind>) and status certificates, replicated on three nodes",
        subjects=list(SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        max_age=MAX_AGE_S,
        max_bytes=-1,
        max_msgs=-1,
        max_msg_size=MAX_MSG_BYTES,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def consumer_config(durable: str, *, ack_wait_s: float = ACK_WAIT_S,
                    max_ack_pending: int = MAX_ACK_PENDING) -> ConsumerConfig:
    """Central's durable: every event from the start, explicit acks, redelivered forever
    (an event is never dropped for having failed too often: storage outages end)."""
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        filter_subject=None,
    )


@dataclass(frozen=True, slots=True)
class NatsSourceSettings:
    """Where to read: the cluster's nodes, the login, the CA that issued the nodes'
    certificates, the stream and the durable."""

    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    # PEM file of the CA the nodes' client certificates come from (deploy/nats:
    # central-ca.pem); None: the system's trust store. Given one, a nats:// URL is
    # upgraded to TLS too (the shipped cluster refuses a plain client).
    ca_file: str | None = None
    stream: str = STREAM
    durable: str = DURABLE
    replicas: int = REPLICAS
    batch: int = BATCH
    fetch_wait_s: float = FETCH_WAIT_S
    ack_wait_s: float = ACK_WAIT_S
    max_ack_pending: int = MAX_ACK_PENDING

    def __post_init__(self) -> None:
        if not self.servers:
            raise NatsSourceError("a NATS source needs at least one server")
        if not 1 <= self.batch <= 10_000:
            raise NatsSourceError(f"batch must be 1..10000, got {self.batch}")
        if not 1 <= self.replicas <= 5:
            raise NatsSourceError(f"replicas must be 1..5, got {self.replicas}")

    def tls_context(self) -> ssl.SSLContext | None:
        """TLS trusting ``ca_file`` (None without one: nats-py then uses the system's
        trust store for tls:// URLs). An unreadable or non-PEM file is a
        NatsSourceError, said at start rather than at every reconnect."""
        if self.ca_file is None:
            return None
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise NatsSourceError(f"cannot use {self.ca_file!r} as the NATS cluster's CA "
                                  f"(a PEM certificate file): {describe_error(e)}") from e

    @classmethod
    def from_url(cls, url: str, environ: dict[str, str] | None = None, *,
                 ca_file: str | None = None) -> NatsSourceSettings:
        """``nats://[user@]host:port[,host:port...][?durable=&batch=&replicas=]``
        (``tls://`` the same, TLS required), trusting ``ca_file`` if given.

        Every node of the cluster in one URL, comma-separated, so the client can fail
        over from the first contact. The password is read from ``STOREGATE_NATS_PASSWORD``
        (a password in the URL works too, but ends up in ``ps`` and shell history)."""
        env = os.environ if environ is None else environ
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("nats", "tls"):
            raise NatsSourceError(f"not a NATS URL (nats://host:4222,...): {url!r}")
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        hosts = [h.strip() for h in hostlist.split(",") if h.strip()]
        if not hosts:
            raise NatsSourceError(f"no server in {url!r}: nats://host:4222,host:4222,...")
        user, _, password = userinfo.partition(":")
        query = urllib.parse.parse_qs(parts.query)
        unknown = set(query) - {"durable", "batch", "replicas", "stream"}
        if unknown:
            raise NatsSourceError(f"unknown option(s) in {url!r}: {sorted(unknown)} "
                                  "(known: durable, batch, replicas, stream)")

        def one(name: str, default: str) -> str:
            return query.get(name, [default])[-1]

        try:
            batch, replicas = int(one("batch", str(BATCH))), int(one("replicas", str(REPLICAS)))
        except ValueError as e:
            raise NatsSourceError(f"batch and replicas must be integers in {url!r}") from e
        return cls(
            servers=tuple(f"{parts.scheme}://{h}" for h in hosts),
            user=urllib.parse.unquote(user) or None,
            password=urllib.parse.unquote(password) or env.get(PASSWORD_ENV) or None,
            stream=one("stream", STREAM), durable=one("durable", DURABLE),
            batch=batch, replicas=replicas, ca_file=ca_file)


@dataclass
class NatsSourceCounts:
    """Observable counters (written by the source's loop, read by status and tests)."""

    fetched: int = 0
    acked: int = 0
    redelivered: int = 0  # messages JetStream delivered more than once
    handler_failures: int = 0  # batches handed back because the handler raised
    fetch_errors: int = 0
    disconnects: int = 0
    reconnects: int = 0
    batches: int = 0


class NatsSource:
    """One central instance's reader of the shared durable (see the module doc)."""

    def __init__(self, settings: NatsSourceSettings, handler: Handler, *,
                 clock: Callable[[], float] = time.time,
                 on_connection: Callable[[bool], None] | None = None) -> None:
        """``on_connection(up)`` is called on the source's loop at every connect and
        disconnect (a status page's "connected")."""
        self._settings = settings
        self._handler = handler
        self._clock = clock
        self._on_connection = on_connection
        self._log_once = LogOnce(log)
        self.counts = NatsSourceCounts()
        self.connected = False  # observable
        self.last_error: str | None = None  # observable

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        if self._on_connection is not None:
            self._on_connection(up)

    async def run(self, stop: asyncio.Event) -> None:
        """Read until ``stop`` is set; then finish the batch in hand and close."""
        nc = await self._connect(stop)
        if nc is None:
            return
        try:
            js = nc.jetstream()
            sub = await self._subscribe(js, stop)
            if sub is None:
                return
            attempt = 0
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self._settings.batch,
                                           timeout=self._settings.fetch_wait_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    # nothing to read (nats-py's, or asyncio's when the wait itself
                    # ran out on a loaded host): not a failure
                    attempt = 0
                    continue
                except (nats.errors.Error, OSError) as e:
                    # A node's loss shows here for a few seconds (no responders, a
                    # leader election, a closed connection) until nats-py has
                    # reconnected and JetStream has a leader again.
                    self.counts.fetch_errors += 1
                    self.last_error = describe_error(e)
                    self._log_once(f"fetch:{type(e).__name__}",
                                   "NATS fetch failed, retrying: %s", describe_error(e))
                    await sleep_until_stopped(stop, RETRY.delay(attempt, random.random()))
                    attempt += 1
                    continue
                attempt = 0
                await self._deliver(msgs, stop)
        finally:
            await self._close(nc)

    async def _connect(self, stop: asyncio.Event) -> Client | None:
        s = self._settings

        async def disconnected() -> None:
            self._set_connected(False)
            self.counts.disconnects += 1
            log.warning("disconnected from NATS; reconnecting to another node")

        async def reconnected() -> None:
            self._set_connected(True)
            self.counts.reconnects += 1
            log.info("reconnected to NATS at %s", nc.connected_url.netloc
                     if nc.connected_url else "?")

        async def error(e: Exception) -> None:
            self._log_once(f"nats:{type(e).__name__}", "NATS client error: %s",
                           describe_error(e))

        tls = s.tls_context()
        attempt = 0
        while not stop.is_set():
            try:
                nc = await nats.connect(
                    servers=list(s.servers), user=s.user, password=s.password, tls=tls,
                    name=f"storegate-central-{os.getpid()}",
                    allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5, connect_timeout=3,
                    disconnected_cb=disconnected, reconnected_cb=reconnected,
                    error_cb=error)
            except (nats.errors.Error, OSError) as e:
                self._log_once("connect", "cannot connect to NATS (%s), retrying: %s",
                               ", ".join(s.servers), describe_error(e))
                await sleep_until_stopped(stop, RETRY.delay(attempt, random.random()))
                attempt += 1
                continue
            self._set_connected(True)
            log.info("reading %s through durable %r from NATS at %s", s.stream, s.durable,
                     nc.connected_url.netloc if nc.connected_url else "?")
            return nc
        return None

    async def _subscribe(self, js: JetStreamContext,
                         stop: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        """The stream (created if absent, checked if present) and the durable (created
        or bound; every instance asks for the same config, so this is idempotent)."""
        s = self._settings
        attempt = 0
        while not stop.is_set():
            try:
                await self._ensure_stream(js)
                await js.add_consumer(s.stream, consumer_config(
                    s.durable, ack_wait_s=s.ack_wait_s, max_ack_pending=s.max_ack_pending))
                return await js.pull_subscribe_bind(durable=s.durable, stream=s.stream)
            except NatsSourceError:
                raise
            except (nats.errors.Error, OSError) as e:
                self._log_once("subscribe", "cannot set up stream %s / durable %s yet, "
                               "retrying: %s", s.stream, s.durable, describe_error(e))
                await sleep_until_stopped(stop, RETRY.delay(attempt, random.random()))
                attempt += 1
        return None

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        s = self._settings
        try:
            info = await js.stream_info(s.stream)
        except nats.js.errors.NotFoundError:
            config = events_stream(s.replicas)
            config.name = s.stream
            await js.add_stream(config)
            log.info("created stream %s (%d replicas) on %s", s.stream, s.replicas,
                     ", ".join(SUBJECTS))
            return
        have = set(info.config.subjects or ())
        if not set(SUBJECTS) <= have:
            raise NatsSourceError(
                f"stream {s.stream} exists without the events' subjects: has "
                f"{sorted(have)}, needs {list(SUBJECTS)} (update it: "
                "nats stream edit, or deploy/nats/events-stream.json)")
        if (info.config.num_replicas or 1) < s.replicas:
            log.warning("stream %s has %s replica(s), fewer than %d: a node's loss can "
                        "stop it", s.stream, info.config.num_replicas, s.replicas)

    async def _deliver(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        self.counts.fetched += len(msgs)
        self.counts.batches += 1
        for m in msgs:
            if m.metadata.num_delivered > 1:
                self.counts.redelivered += 1
        batch = [(m.subject, m.data) for m in msgs]
        try:
            # The handler commits to disk or PostgreSQL: off the loop, so the client
            # keeps answering the server's pings meanwhile.
            await asyncio.to_thread(self._handler, batch, self._clock())
        except Exception as e:  # any failure of the handler: nothing was committed
            self.counts.handler_failures += 1
            self.last_error = describe_error(e)
            self._log_once(f"handler:{type(e).__name__}",
                           "central could not store a batch of %d; handed back to "
                           "the stream for redelivery: %s", len(msgs), describe_error(e))
            for m in msgs:
                await self._settle(m, nak=True)
            await sleep_until_stopped(stop, NAK_DELAY_S)
            return
        for m in msgs:
            await self._settle(m, nak=False)

    async def _settle(self, msg: Msg, *, nak: bool) -> None:
        try:
            if nak:
                await msg.nak(delay=NAK_DELAY_S)
            else:
                await msg.ack()
                self.counts.acked += 1
        except (nats.errors.Error, OSError) as e:
            # The connection went while settling: the message comes again after
            # ack_wait, and its id makes it a duplicate.
            self._log_once(f"settle:{type(e).__name__}", "could not %s a message "
                           "(it will be redelivered): %s", "nak" if nak else "ack",
                           describe_error(e))

    @staticmethod
    async def _close(nc: Client) -> None:
        try:
            await nc.close()
        except (nats.errors.Error, OSError) as e:
            log.debug("closing the NATS connection: %s", describe_error(e))


def run_until_signalled(settings: NatsSourceSettings, handler: Handler) -> NatsSource:
    """Run one source on a fresh event loop until SIGTERM or SIGINT (for the CLI): the
    batch in hand is finished and acked, then the connection closes."""
    source = NatsSource(settings, handler)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await source.run(stop)

    asyncio.run(main())
    return source
