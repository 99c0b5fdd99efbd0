"""``storegate central --source nats://...``: central on a fleet's NATS cluster.

The same service as on one broker, with two edges swapped: events come from the
cluster's JetStream stream through the durable every instance shares
(adapters/central/nats_source.py), and signed commands go out over MQTT to the
cluster's MQTT listener (QoS 1, MQTT 3.1.1: NATS speaks no MQTT 5), where each store's
bridge holds a persistent session that keeps them while the store is offline. A
command published as a plain NATS message would reach a bridge as QoS 0, and be lost
if that store were offline.

:class:`NatsIngestSource` has the surface the CLI uses of the MQTT source (``start``,
``stop``, ``publish``, ``connected`` and the counters), so the rest of central is
unchanged. Its NATS reader runs on its own thread and event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any, Final

from paho.mqtt import client as mqtt

from storegate.adapters.central.nats_source import (
    Handler,
    NatsSource,
    NatsSourceError,
    NatsSourceSettings,
)
from storegate.adapters.mqtt_client import MqttSettings, base_client
from storegate.adapters.plumbing import describe_error

log = logging.getLogger(__name__)

NATS_SCHEMES: Final = ("nats://", "tls://")
FAILOVER_S: Final = 3.0  # a listener unreachable this long: try the next node's


def is_nats(source: str | None) -> bool:
    return source is not None and source.startswith(NATS_SCHEMES)


class NatsIngestSource:
    """Events from the cluster's stream, commands to its MQTT listener."""

    def __init__(self, nats_settings: NatsSourceSettings, handle: Handler,
                 commands_mqtt: MqttSettings) -> None:
        self.connected = threading.Event()  # observable: the NATS reader is connected
        self._reader = NatsSource(nats_settings, handle, on_connection=self._connection)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="central-nats", daemon=True)
        self._commands = FailoverPublisher(commands_mqtt)

    def _connection(self, up: bool) -> None:
        (self.connected.set if up else self.connected.clear)()

    # the counters the CLI's status page reads
    @property
    def received(self) -> int:
        return self._reader.counts.fetched

    @property
    def handled(self) -> int:
        return self._reader.counts.acked

    @property
    def failures(self) -> int:
        return self._reader.counts.handler_failures

    @property
    def last_error(self) -> str | None:
        return self._reader.last_error

    @property
    def counts(self) -> dict[str, Any]:
        return dataclasses.asdict(self._reader.counts)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        self._commands.start()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._reader.run(self._stop)

        try:
            asyncio.run(main())
        except NatsSourceError as e:
            # A stream that cannot be used (wrong subjects): said once, loudly; the
            # status page shows it too.
            self._reader.last_error = describe_error(e)
            log.error("central: the NATS source stopped: %s",  # noqa: TRY400 (one line)
                      describe_error(e))
        finally:
            self._ready.set()
            self.connected.clear()

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> bool:
        return self._commands.publish(topic, payload, timeout_s)

    def stop(self) -> None:
        """Finish the batch in hand (it is acked), then close both connections."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._commands.stop()


def mqtt_addresses(settings: MqttSettings) -> list[tuple[str, int]]:
    """``--mqtt-host a:8883,b:8883,c:8883`` (or plain hosts, on ``--mqtt-port``)."""
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in settings.host.split(",")):
        host, sep, port = item.rpartition(":")
        if sep and port.isdigit():
            out.append((host, int(port)))
        elif item:
            out.append((item, settings.port))
    if not out:
        raise NatsSourceError(f"no MQTT address in --mqtt-host {settings.host!r}")
    return out


class FailoverPublisher:
    """Commands to the cluster's MQTT listeners: MQTT 3.1.1 (NATS refuses MQTT 5), QoS 1,
    clean session (central only publishes; what must outlive a disconnect is the
    store's bridge session). paho reconnects to one address only, so a watcher moves
    to the next node's listener when the current one has been unreachable for
    ``FAILOVER_S``; a command in flight then is not acknowledged (``publish`` is False)
    and its sender retries (the gap scanner does)."""

    def __init__(self, settings: MqttSettings) -> None:
        self._settings = dataclasses.replace(settings, protocol="3.1.1")
        self._addresses = mqtt_addresses(self._settings)
        self._index = 0
        self._lock = threading.Lock()  # guards _client and _index
        self._client = self._connect()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="central-commands",
                                         daemon=True)
        self.failovers = 0  # observable
        self.publish_errors = 0  # observable

    def _connect(self) -> mqtt.Client:
        host, port = self._addresses[self._index]
        client = base_client(self._settings, self._settings.client_id,
                             reconnect_on_failure=True, clean_session=True)
        client.reconnect_delay_set(1, 2)
        client.connect_async(host, port, keepalive=self._settings.keepalive_s)
        return client

    def start(self) -> None:
        self._client.loop_start()
        self._watcher.start()

    def _watch(self) -> None:
        down_since: float | None = None
        while not self._stopping.wait(0.5):
            if self._client.is_connected():
                down_since = None
                continue
            now = time.monotonic()
            if down_since is None:
                down_since = now
            elif now - down_since >= FAILOVER_S and len(self._addresses) > 1:
                with self._lock:
                    old = self._client
                    self._index = (self._index + 1) % len(self._addresses)
                    self._client = self._connect()
                    self._client.loop_start()
                    self.failovers += 1
                old.loop_stop()
                host, port = self._addresses[self._index]
                log.warning("central: commands' MQTT listener unreachable; now %s:%d",
                            host, port)
                down_since = None

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> bool:
        """QoS 1; True once the cluster acknowledged it within ``timeout_s`` (then
        JetStream holds it for the store's bridge session)."""
        with self._lock:
            client = self._client
        info = client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as e:
            self.publish_errors += 1
            log.warning("central: command on %s not sent: %s", topic, describe_error(e))
            return False
        return info.is_published()

    def stop(self) -> None:
        self._stopping.set()
        self._watcher.join(5)
        with self._lock:
            client = self._client
        client.disconnect()
        client.loop_stop()


def source_from_url(url: str, handle: Handler, commands_mqtt: MqttSettings, *,
                    ca_file: str | None = None) -> NatsIngestSource:
    """``--source tls://[user@]host:4222,host:4222,...[?durable=&batch=]`` (or nats://),
    trusting ``--nats-cafile``; the password from ``STOREGATE_NATS_PASSWORD``. A bad URL
    or CA file is a NatsSourceError (exit 2)."""
    settings = NatsSourceSettings.from_url(url, ca_file=ca_file)
    settings.tls_context()  # an unusable CA file fails here, once, not at each reconnect
    return NatsIngestSource(settings, handle, commands_mqtt)
