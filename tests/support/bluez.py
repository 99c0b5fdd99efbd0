"""A fake BlueZ for real bleak: a private D-Bus bus plus python-dbusmock's ``bluez5`` template.

No radio, no bluetoothd, no root. ``BluezMock.running(workdir)`` starts

* a private ``dbus-daemon`` (allow-everything policy, socket in a short /tmp directory);
  bleak's BlueZ backend connects to ``DBUS_SYSTEM_BUS_ADDRESS``, so set it to
  ``mock.address`` in the process running bleak, and
* ``python -m dbusmock --system --template bluez5`` on that bus, extended with a control
  object (``_EXTENSION``) that injects adverts in batches, fails adapter methods on
  demand, counts calls and models bluetoothd's discovery sessions.

A fixture (put it in conftest.py to share it)::

    @pytest.fixture
    def bluez(tmp_path, monkeypatch):
        with BluezMock.running(tmp_path / "bluez", adapters=("hci0", "hci1")) as mock:
            monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", mock.address)
            yield mock

bleak only ever sees ordinary BlueZ traffic: ``GetManagedObjects``,
``SetDiscoveryFilter``/``StartDiscovery``/``StopDiscovery`` (active),
``AdvertisementMonitorManager1.RegisterMonitor``/``UnregisterMonitor`` (passive), and
``InterfacesAdded`` / ``PropertiesChanged`` / ``InterfacesRemoved`` signals.

Like bluetoothd, the mock

* reports adverts only on a powered adapter that is scanning (``Discovering``, or with a
  registered advertisement monitor): ``advertise`` returns whether the advert was
  delivered, so a test can prove that a watchdog really restarted discovery;
* merges ``ManufacturerData`` / ``ServiceData`` per key across adverts of one address,
  so stale keys stay in the dict bleak hands over;
* keeps one discovery session per D-Bus client (src/adapter.c): a second StartDiscovery
  from the same client is ``org.bluez.Error.InProgress``, StopDiscovery without a session
  is ``org.bluez.Error.Failed`` "No discovery started", all of them are
  ``org.bluez.Error.NotReady`` while powered off, and a client leaving the bus loses its
  session and monitors. It does not filter adverts by the monitors' or_patterns.

Control calls are blocking D-Bus calls (~0.2 ms); they are fine outside and inside a
running event loop: bleak reads the signals once the loop runs again, and
``await sync_bleak()`` waits until it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dbus  # type: ignore[import-untyped]  # dbus-python, pulled in by python-dbusmock
import dbus.bus  # type: ignore[import-untyped]
from bleak.backends.bluezdbus.manager import get_global_bluez_manager
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from dbus_fast import Message, MessageType

from tests.support.waiting import wait_for

BLUEZ = "org.bluez"
CONTROL_PATH = "/org/storegate/BluezMock"
CONTROL_IFACE = "org.storegate.BluezMock"
MOCK_IFACE = "org.freedesktop.DBus.Mock"

IN_PROGRESS = "org.bluez.Error.InProgress"
NOT_READY = "org.bluez.Error.NotReady"
FAILED = "org.bluez.Error.Failed"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"

# the messages bluetoothd sends with these errors (src/error.c)
_MESSAGES = {
    IN_PROGRESS: "Operation already in progress",
    NOT_READY: "Resource Not Ready",
    FAILED: "Operation failed",
    UNKNOWN_METHOD: "Unknown method",
}

EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"

_CALL_TIMEOUT = 10.0

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""

# Loaded into the running mock with the Mock interface's AddTemplate (it runs inside the
# dbusmock process, where `dbus` and `dbusmock` are importable). Its methods live on a
# plain dbus.service.Object, not a DBusMockObject, so they skip dbusmock's per-call
# logging: a batch of thousands of adverts costs one round trip and no log line.
_EXTENSION = r'''
"""storegate extension for the bluez5 template (written out by tests/support/bluez.py).

Adapter1 discovery follows bluetoothd's src/adapter.c: discovery sessions per D-Bus client
(sender); StartDiscovery from a client that already has one -> org.bluez.Error.InProgress;
StopDiscovery without one -> org.bluez.Error.Failed "No discovery started"; both and
SetDiscoveryFilter -> org.bluez.Error.NotReady while powered off; a client that leaves the
bus loses its session and its advertisement monitors; Discovering is true while any
session exists (unless the test killed discovery with SetAdapterProperty).
"""
import collections

import dbus
import dbus.lowlevel
import dbus.service

from dbusmock import mockobject

CONTROL_PATH = "/org/storegate/BluezMock"
CONTROL_IFACE = "org.storegate.BluezMock"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
MERGED = {"ManufacturerData": "qv", "ServiceData": "sv"}

_control = None


def _error(name, message):
    return dbus.exceptions.DBusException(message, name="org.bluez.Error." + name)


def _run_code(code, obj, args):
    if callable(code):
        return code(obj, *args)
    if code:
        loc = {"self": obj, "args": list(args)}
        exec(code, vars(mockobject), loc)
        return loc.get("ret")
    return None


def _dispatcher(name, iface, in_sig, out_sig, body):
    n = len(list(dbus.Signature(in_sig)))
    if n == 0:
        def method(self, sender=None):
            return body(self, (), sender)
    elif n == 1:
        def method(self, arg1, sender=None):
            return body(self, (arg1,), sender)
    elif n == 2:
        def method(self, arg1, arg2, sender=None):
            return body(self, (arg1, arg2), sender)
    else:
        return None
    method.__name__ = str(name)
    return dbus.service.method(iface, in_signature=in_sig, out_signature=out_sig,
                               sender_keyword="sender")(method)


class Control(dbus.service.Object):
    # dbusmock replaces dbus-python's method lookup with one that reads these two
    interface = CONTROL_IFACE
    methods = {}

    def __init__(self, bus_name):
        super().__init__(bus_name, CONTROL_PATH)
        self.faults = {}  # (adapter, method) -> [error name, message, remaining (<0: forever)]
        self.calls = collections.Counter()  # (adapter, method) -> attempts, failed ones too
        self.filters = {}  # adapter -> last SetDiscoveryFilter argument
        self.monitor_owner = {}  # (adapter, monitor path) -> sender
        self.connection.add_signal_receiver(
            self._name_owner_changed, signal_name="NameOwnerChanged",
            dbus_interface="org.freedesktop.DBus", bus_name="org.freedesktop.DBus")

    # plumbing --------------------------------------------------------------------------

    def _send(self, path, interface, member, signature, *args):
        msg = dbus.lowlevel.SignalMessage(path, interface, member)
        msg.append(*args, signature=signature)
        self.connection.send_message(msg)

    def _set_adapter_prop(self, adapter, prop, value):
        adapter.props[ADAPTER_IFACE][prop] = dbus.Boolean(value)
        self._send(adapter.path, PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as", ADAPTER_IFACE,
                   {prop: dbus.Boolean(value)}, dbus.Array([], signature="s"))

    def _adapters(self):
        return [o for p, o in list(mockobject.objects.items())
                if p.count("/") == 3 and ADAPTER_IFACE in o.props]

    def _name_owner_changed(self, name, old_owner, new_owner):
        if new_owner or not str(name).startswith(":"):
            return
        for adapter in self._adapters():
            adapter.sg_sessions.discard(str(name))
            if not adapter.sg_sessions and adapter.props[ADAPTER_IFACE].get("Discovering"):
                self._set_adapter_prop(adapter, "Discovering", False)
            for path in list(adapter.monitors):
                if self.monitor_owner.get((adapter.sg_name, path)) == name:
                    adapter.monitors.remove(path)

    # Adapter1 / AdvertisementMonitorManager1 behaviour ------------------------------------

    def _powered(self, adapter):
        if not adapter.props[ADAPTER_IFACE].get("Powered"):
            raise _error("NotReady", "Resource Not Ready")

    def _start_discovery(self, adapter, args, sender):
        self._powered(adapter)
        if sender in adapter.sg_sessions:
            raise _error("InProgress", "Operation already in progress")
        adapter.sg_sessions.add(sender)
        if not adapter.props[ADAPTER_IFACE].get("Discovering"):
            self._set_adapter_prop(adapter, "Discovering", True)

    def _stop_discovery(self, adapter, args, sender):
        self._powered(adapter)
        if sender not in adapter.sg_sessions:
            raise _error("Failed", "No discovery started")
        adapter.sg_sessions.discard(sender)
        if not adapter.sg_sessions and adapter.props[ADAPTER_IFACE].get("Discovering"):
            self._set_adapter_prop(adapter, "Discovering", False)

    def _set_discovery_filter(self, adapter, args, sender):
        self._powered(adapter)
        self.filters[adapter.sg_name] = args[0]

    def _register_monitor(self, adapter, args, sender):
        path = str(args[0])
        if path in adapter.monitors:
            raise _error("AlreadyExists", "Already registered")
        adapter.monitors.append(path)
        self.monitor_owner[(adapter.sg_name, path)] = sender

    def _unregister_monitor(self, adapter, args, sender):
        path = str(args[0])
        if path not in adapter.monitors:
            raise _error("DoesNotExist", "Unknown monitor")
        adapter.monitors.remove(path)
        self.monitor_owner.pop((adapter.sg_name, path), None)

    def _patch_adapter(self, name):
        adapter = mockobject.objects["/org/bluez/" + name]
        adapter.sg_name = name
        adapter.sg_sessions = set()
        props = adapter.props[ADAPTER_IFACE]
        props.setdefault("Roles", dbus.Array(["central", "peripheral"], signature="s"))
        if not hasattr(adapter, "monitors"):
            adapter.monitors = []
        methods = adapter.methods.setdefault(ADAPTER_IFACE, {})
        if "SetDiscoveryFilter" not in methods:
            adapter.AddMethod(ADAPTER_IFACE, "SetDiscoveryFilter", "a{sv}", "", "")
        if MONITOR_MANAGER_IFACE not in adapter.methods:
            adapter.AddProperties(MONITOR_MANAGER_IFACE, {
                "SupportedMonitorTypes": dbus.Array(["or_patterns"], signature="s"),
                "SupportedFeatures": dbus.Array([], signature="s"),
            })
            adapter.AddMethods(MONITOR_MANAGER_IFACE, [
                ("RegisterMonitor", "o", "", ""), ("UnregisterMonitor", "o", "", "")])
        overrides = {
            "StartDiscovery": self._start_discovery,
            "StopDiscovery": self._stop_discovery,
            "SetDiscoveryFilter": self._set_discovery_filter,
            "RegisterMonitor": self._register_monitor,
            "UnregisterMonitor": self._unregister_monitor,
        }
        for iface in (ADAPTER_IFACE, MONITOR_MANAGER_IFACE):
            for method, (in_sig, out_sig, code, _) in list(adapter.methods[iface].items()):
                body = self._guard(name, method, code, overrides.get(method))
                dispatch = _dispatcher(method, iface, in_sig, out_sig, body)
                if dispatch is not None:
                    adapter.methods[iface][method] = (in_sig, out_sig, code, dispatch)
        # the template announces Adapter1 only; bluetoothd announces every interface
        extra = {i: p for i, p in adapter.props.items() if i != ADAPTER_IFACE}
        if extra:
            self._send("/", OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                       dbus.ObjectPath(adapter.path), extra)

    def _guard(self, adapter_name, method, code, override):
        def body(obj, args, sender):
            key = (adapter_name, method)
            self.calls[key] += 1
            fault = self.faults.get(key)
            if fault is not None:
                if fault[2] > 0:
                    fault[2] -= 1
                    if fault[2] == 0:
                        del self.faults[key]
                raise dbus.exceptions.DBusException(fault[1], name=fault[0])
            if override is not None:
                return override(obj, args, str(sender))
            return _run_code(code, obj, args)
        return body

    def _remove_object(self, path):
        obj = mockobject.objects[path]
        interfaces = dbus.Array(list(obj.props), signature="s")
        mockobject.objects["/"].RemoveObject(path)
        self._send("/", OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas",
                   dbus.ObjectPath(path), interfaces)

    # control API ------------------------------------------------------------------------

    @dbus.service.method(CONTROL_IFACE, in_signature="ss", out_signature="o")
    def AddAdapter(self, name, alias):
        path = mockobject.objects["/"].AddAdapter(name, alias)
        self._patch_adapter(str(name))
        return path

    @dbus.service.method(CONTROL_IFACE, in_signature="sb", out_signature="")
    def RemoveAdapter(self, name, with_devices):
        adapter_path = "/org/bluez/" + name
        if with_devices:
            for path in [p for p in mockobject.objects if p.startswith(adapter_path + "/")]:
                self._remove_object(path)
        self._remove_object(adapter_path)

    @dbus.service.method(CONTROL_IFACE, in_signature="a(ssa{sv}b)", out_signature="u",
                         byte_arrays=True)
    def Advertise(self, adverts):
        objects = mockobject.objects
        delivered = 0
        for adapter_name, address, props, even_if_idle in adverts:
            adapter_path = "/org/bluez/" + adapter_name
            adapter = objects.get(adapter_path)
            if adapter is None:
                continue
            aprops = adapter.props[ADAPTER_IFACE]
            scanning = aprops.get("Powered") and (aprops.get("Discovering") or adapter.monitors)
            if not (scanning or even_if_idle):
                continue
            path = adapter_path + "/dev_" + str(address).upper().replace(":", "_")
            device = objects.get(path)
            if device is None:
                full = {
                    "Address": dbus.String(address),
                    "AddressType": dbus.String("public"),
                    "Alias": dbus.String(str(address).replace(":", "-")),
                    "Adapter": dbus.ObjectPath(adapter_path),
                    "Paired": dbus.Boolean(False),
                    "Bonded": dbus.Boolean(False),
                    "Trusted": dbus.Boolean(False),
                    "Blocked": dbus.Boolean(False),
                    "LegacyPairing": dbus.Boolean(False),
                    "Connected": dbus.Boolean(False),
                    "ServicesResolved": dbus.Boolean(False),
                    "UUIDs": dbus.Array([], signature="s"),
                }
                for key, value in props.items():
                    full[str(key)] = value
                if "Name" in props:
                    full["Alias"] = dbus.String(props["Name"])
                objects["/"].AddObject(path, DEVICE_IFACE, full, [])
                self._send("/", OBJECT_MANAGER_IFACE, "InterfacesAdded", "oa{sa{sv}}",
                           dbus.ObjectPath(path), {DEVICE_IFACE: full})
            else:
                current = device.props[DEVICE_IFACE]
                changed = {}
                for key, value in props.items():
                    key = str(key)
                    if key in MERGED:
                        merged = dbus.Dictionary(current.get(key, {}), signature=MERGED[key])
                        merged.update(value)
                        value = merged
                    elif key == "Name":
                        changed["Alias"] = dbus.String(value)
                    changed[key] = value
                current.update(changed)
                self._send(path, PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                           DEVICE_IFACE, changed, dbus.Array([], signature="s"))
            delivered += 1
        return dbus.UInt32(delivered)

    @dbus.service.method(CONTROL_IFACE, in_signature="ss", out_signature="b")
    def RemoveDevice(self, adapter_name, address):
        path = "/org/bluez/" + adapter_name + "/dev_" + str(address).upper().replace(":", "_")
        if path not in mockobject.objects:
            return False
        self._remove_object(path)
        return True

    @dbus.service.method(CONTROL_IFACE, in_signature="ssssi", out_signature="")
    def SetFault(self, adapter_name, method, error, message, count):
        key = (str(adapter_name), str(method))
        if count == 0:
            self.faults.pop(key, None)
        else:
            self.faults[key] = [str(error), str(message), int(count)]

    @dbus.service.method(CONTROL_IFACE, in_signature="s", out_signature="")
    def ClearFaults(self, adapter_name):
        for key in list(self.faults):
            if not adapter_name or key[0] == adapter_name:
                del self.faults[key]

    @dbus.service.method(CONTROL_IFACE, in_signature="ss", out_signature="u")
    def CallCount(self, adapter_name, method):
        return dbus.UInt32(self.calls[(str(adapter_name), str(method))])

    @dbus.service.method(CONTROL_IFACE, in_signature="ssb", out_signature="")
    def SetAdapterProperty(self, adapter_name, prop, value):
        adapter = mockobject.objects["/org/bluez/" + adapter_name]
        if prop == "Powered" and not value:
            # bluetoothd drops every discovery session when the adapter goes down
            adapter.sg_sessions.clear()
            if adapter.props[ADAPTER_IFACE].get("Discovering"):
                self._set_adapter_prop(adapter, "Discovering", False)
        self._set_adapter_prop(adapter, str(prop), value)

    @dbus.service.method(CONTROL_IFACE, in_signature="s", out_signature="a{sv}")
    def AdapterState(self, adapter_name):
        adapter = mockobject.objects.get("/org/bluez/" + adapter_name)
        if adapter is None:
            return {"Exists": dbus.Boolean(False)}
        props = adapter.props[ADAPTER_IFACE]
        return {
            "Exists": dbus.Boolean(True),
            "Powered": dbus.Boolean(props.get("Powered", False)),
            "Discovering": dbus.Boolean(props.get("Discovering", False)),
            "Sessions": dbus.Array(sorted(adapter.sg_sessions), signature="s"),
            "Monitors": dbus.Array(adapter.monitors, signature="s"),
            "DiscoveryFilter": dbus.Dictionary(self.filters.get(adapter_name, {}),
                                               signature="sv"),
        }


def load(mock, parameters):
    global _control  # keep the exported object alive
    _control = Control(mock.bus_name)
'''


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test process dies (no orphans)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _popen(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
           stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.STDOUT
           ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(cmd), env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
        stdout=stdout, stderr=stderr,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - it only calls prctl
    )


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 2.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(grace)


def dbus_daemon_binary() -> str:
    for candidate in (shutil.which("dbus-daemon"), "/usr/bin/dbus-daemon"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("dbus-daemon is not installed (apt-get install dbus)")


class PrivateBus:
    """A private ``dbus-daemon`` listening on a unix socket; ``address`` is for clients."""

    def __init__(self) -> None:
        # A short directory: unix socket paths are limited to 108 bytes, pytest's tmp_path
        # with a long test name is not.
        self.dir = Path(tempfile.mkdtemp(prefix="sg-dbus-"))
        self.socket = self.dir / "bus"
        self.conf = self.dir / "bus.conf"
        self.conf.write_text(_BUS_CONFIG.format(socket=self.socket))
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already running"
        self.proc = _popen(
            [dbus_daemon_binary(), f"--config-file={self.conf}", "--nofork", "--nopidfile",
             "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError("dbus-daemon did not print its address")
        self.address = line

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _bytes(data: bytes | bytearray | str) -> dbus.ByteArray:
    return dbus.ByteArray(bytes.fromhex(data) if isinstance(data, str) else bytes(data))


@dataclass(frozen=True)
class Advert:
    """One advert as bluetoothd would report it for ``address`` on ``adapter``.

    The first advert of an address makes the device appear (``InterfacesAdded`` with the
    full property set); later ones send ``PropertiesChanged`` with ``RSSI`` plus only the
    fields given here (``None``/empty means "not in this advert"). Bytes may be given as
    ``bytes`` or a hex string.
    """

    address: str
    rssi: int = -60
    manufacturer_data: Mapping[int, bytes | str] = field(default_factory=dict)
    service_data: Mapping[str, bytes | str] = field(default_factory=dict)
    service_uuids: Sequence[str] = ()
    name: str | None = None
    tx_power: int | None = None
    address_type: str | None = None  # "public" or "random"; default "public" on appearance
    adapter: str = "hci0"
    even_if_idle: bool = False  # deliver even when the adapter is not scanning

    def to_dbus(self) -> tuple[str, str, dbus.Dictionary, bool]:
        props: dict[str, Any] = {"RSSI": dbus.Int16(self.rssi)}
        if self.manufacturer_data:
            props["ManufacturerData"] = dbus.Dictionary(
                {dbus.UInt16(k): _bytes(v) for k, v in self.manufacturer_data.items()},
                signature="qv")
        if self.service_data:
            props["ServiceData"] = dbus.Dictionary(
                {dbus.String(k.lower()): _bytes(v) for k, v in self.service_data.items()},
                signature="sv")
        if self.service_uuids:
            props["UUIDs"] = dbus.Array([u.lower() for u in self.service_uuids], signature="s")
        if self.name is not None:
            props["Name"] = dbus.String(self.name)
        if self.tx_power is not None:
            props["TxPower"] = dbus.Int16(self.tx_power)
        if self.address_type is not None:
            props["AddressType"] = dbus.String(self.address_type)
        return (self.adapter, self.address.upper(), dbus.Dictionary(props, signature="sv"),
                self.even_if_idle)


@dataclass(frozen=True)
class AdapterState:
    exists: bool
    powered: bool = False
    discovering: bool = False
    sessions: tuple[str, ...] = ()  # unique bus names of clients with a discovery session
    monitors: tuple[str, ...] = ()  # object paths of registered advertisement monitors
    discovery_filter: Mapping[str, Any] = field(default_factory=dict)


class BluezMock:
    """A private system bus with a mocked bluetoothd on it, remote-controlled from tests.

    Use ``with BluezMock.running(workdir) as bluez:`` and set
    ``DBUS_SYSTEM_BUS_ADDRESS=bluez.address`` in the process running bleak.
    """

    def __init__(self, workdir: Path, adapters: Sequence[str] = ("hci0",)) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.adapters = list(adapters)
        self.log = workdir / "bluez-mock.log"
        self.extension = workdir / "storegate_bluez_ext.py"
        self.extension.write_text(_EXTENSION)
        self.bus = PrivateBus()
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: Any = None
        self._ctl: Any = None
        self.startup_s = 0.0

    # lifecycle ------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def running(cls, workdir: Path, adapters: Sequence[str] = ("hci0",)) -> Iterator[BluezMock]:
        mock = cls(workdir, adapters)
        try:
            mock.start()
            yield mock
        finally:
            mock.stop()

    @property
    def address(self) -> str:
        """The private bus address, for ``DBUS_SYSTEM_BUS_ADDRESS``."""
        return self.bus.address

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point bleak (or a child process) at this bus."""
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def start(self) -> None:
        t0 = time.monotonic()
        self.bus.start()
        self._conn = dbus.bus.BusConnection(self.address)
        self.start_bluetoothd()
        self.startup_s = time.monotonic() - t0

    def start_bluetoothd(self) -> None:
        """Start the mocked bluetoothd and add ``self.adapters`` (no devices, not scanning)."""
        assert self.proc is None, "bluetoothd mock already running"
        env = dict(os.environ)
        env.update(self.env)
        with self.log.open("ab") as log:
            self.proc = _popen(
                [sys.executable, "-m", "dbusmock", "--system", "--template", "bluez5"],
                env=env, stdout=log)
        wait_for(self._owned, 15, "the bluez5 mock to own org.bluez", interval=0.005)
        root = self._conn.get_object(BLUEZ, "/", introspect=False)
        root.AddTemplate(str(self.extension), dbus.Dictionary({}, signature="sv"),
                         dbus_interface=MOCK_IFACE, timeout=_CALL_TIMEOUT)
        self._ctl = dbus.Interface(self._conn.get_object(BLUEZ, CONTROL_PATH, introspect=False),
                                   CONTROL_IFACE)
        for name in self.adapters:
            self._add_adapter(name)

    def _owned(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"bluez5 mock exited: {self.log.read_text(errors='replace')}")
        return bool(self._conn.name_has_owner(BLUEZ))

    def stop_bluetoothd(self, kill: bool = True) -> None:
        """bluetoothd dies (SIGKILL by default): no signals, the name just vanishes."""
        proc, self.proc, self._ctl = self.proc, None, None
        if proc is not None and proc.poll() is None:
            if kill:
                proc.kill()
            _stop(proc)
        if self._conn is not None:
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not self._conn.name_has_owner(BLUEZ), 5, "org.bluez to vanish",
                         interval=0.005)

    def restart_bluetoothd(self) -> None:
        """A bluetoothd crash and restart: adapters come back idle, devices and monitors
        are forgotten, faults are cleared."""
        self.stop_bluetoothd()
        self.start_bluetoothd()

    def stop(self) -> None:
        self.stop_bluetoothd(kill=False)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        self.bus.stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self.bus.proc, self.proc) if p is not None]

    # adapters -------------------------------------------------------------------------

    def _control(self) -> Any:
        if self._ctl is None:
            raise RuntimeError("the bluetoothd mock is not running")
        return self._ctl

    def _add_adapter(self, name: str, alias: str = "storegate-test") -> str:
        return str(self._control().AddAdapter(name, alias, timeout=_CALL_TIMEOUT))

    def add_adapter(self, name: str = "hci0", alias: str = "storegate-test") -> str:
        """Plug an adapter in (``InterfacesAdded``; powered, idle); returns its object path.
        Faults set for this adapter name stay in force."""
        path = self._add_adapter(name, alias)
        if name not in self.adapters:
            self.adapters.append(name)
        return path

    def remove_adapter(self, name: str = "hci0", with_devices: bool = True) -> None:
        """Unplug an adapter: ``InterfacesRemoved`` for its devices (unless ``with_devices``
        is False, like a bluetoothd that dies mid-way) and for the adapter."""
        self._control().RemoveAdapter(name, with_devices, timeout=_CALL_TIMEOUT)
        if name in self.adapters:
            self.adapters.remove(name)

    def set_powered(self, name: str, powered: bool) -> None:
        """Power the adapter off/on (``PropertiesChanged``). Off ends every discovery
        session, like bluetoothd; while off, Start/StopDiscovery and SetDiscoveryFilter fail
        with ``org.bluez.Error.NotReady``."""
        self._control().SetAdapterProperty(name, "Powered", powered, timeout=_CALL_TIMEOUT)

    def stop_discovering(self, name: str = "hci0") -> None:
        """Discovery dies silently (the field failure): ``Discovering`` turns False and
        adverts stop, but the clients' discovery sessions stay, so a plain ``start()``
        again gets ``org.bluez.Error.InProgress``; ``stop()`` then ``start()`` recovers."""
        self._control().SetAdapterProperty(name, "Discovering", False, timeout=_CALL_TIMEOUT)

    def state(self, name: str = "hci0") -> AdapterState:
        s = self._control().AdapterState(name, timeout=_CALL_TIMEOUT)
        if not s["Exists"]:
            return AdapterState(exists=False)
        return AdapterState(
            exists=True, powered=bool(s["Powered"]), discovering=bool(s["Discovering"]),
            sessions=tuple(str(x) for x in s["Sessions"]),
            monitors=tuple(str(m) for m in s["Monitors"]),
            discovery_filter={str(k): _plain(v) for k, v in s["DiscoveryFilter"].items()},
        )

    def discovering(self, name: str = "hci0") -> bool:
        return self.state(name).discovering

    def monitors(self, name: str = "hci0") -> tuple[str, ...]:
        """Object paths of advertisement monitors registered on the adapter (passive scans)."""
        return self.state(name).monitors

    def calls(self, name: str, method: str) -> int:
        """How often ``method`` (StartDiscovery, StopDiscovery, SetDiscoveryFilter,
        RegisterMonitor, ...) was called on adapter ``name``, failed calls included,
        across removal and re-adding of the adapter."""
        return int(self._control().CallCount(name, method, timeout=_CALL_TIMEOUT))

    # faults ---------------------------------------------------------------------------

    def fail(self, method: str = "StartDiscovery", error: str = IN_PROGRESS, *,
             adapter: str = "hci0", times: int | None = 1, message: str | None = None) -> None:
        """Make the next ``times`` calls of an adapter method fail with D-Bus error ``error``
        (``times=None``: every call until ``clear_faults``). Works for any Adapter1 or
        AdvertisementMonitorManager1 method (StartDiscovery, StopDiscovery,
        SetDiscoveryFilter, RegisterMonitor, ...); survives removing and re-adding the
        adapter. The message defaults to bluetoothd's for that error."""
        if times is not None and times <= 0:
            raise ValueError("times must be positive or None")
        count = -1 if times is None else times
        text = message if message is not None else _MESSAGES.get(error, "Operation failed")
        self._control().SetFault(adapter, method, error, text, count, timeout=_CALL_TIMEOUT)

    def clear_faults(self, adapter: str = "") -> None:
        """Clear faults of one adapter, or of all with the default ``""``."""
        self._control().ClearFaults(adapter, timeout=_CALL_TIMEOUT)

    # adverts --------------------------------------------------------------------------

    def advertise(self, address: str, *, rssi: int = -60,
                  manufacturer_data: Mapping[int, bytes | str] | None = None,
                  service_data: Mapping[str, bytes | str] | None = None,
                  service_uuids: Sequence[str] = (), name: str | None = None,
                  tx_power: int | None = None, address_type: str | None = None,
                  adapter: str = "hci0", even_if_idle: bool = False) -> bool:
        """One advert (see ``Advert``); True if delivered, False if the adapter is gone,
        powered off or not scanning."""
        return self.advertise_many([Advert(
            address, rssi=rssi, manufacturer_data=manufacturer_data or {},
            service_data=service_data or {}, service_uuids=service_uuids, name=name,
            tx_power=tx_power, address_type=address_type, adapter=adapter,
            even_if_idle=even_if_idle)]) == 1

    def advertise_many(self, adverts: Iterable[Advert], batch: int = 2000) -> int:
        """Inject adverts in order, ``batch`` per D-Bus call; returns how many were delivered."""
        delivered = 0
        chunk: list[tuple[str, str, dbus.Dictionary, bool]] = []
        for advert in adverts:
            chunk.append(advert.to_dbus())
            if len(chunk) >= batch:
                delivered += self._send(chunk)
                chunk = []
        if chunk:
            delivered += self._send(chunk)
        return delivered

    def _send(self, chunk: list[tuple[str, str, dbus.Dictionary, bool]]) -> int:
        return int(self._control().Advertise(dbus.Array(chunk, signature="(ssa{sv}b)"),
                                             signature="a(ssa{sv}b)", timeout=60))

    def remove_device(self, address: str, adapter: str = "hci0") -> bool:
        """bluetoothd forgets a device (``InterfacesRemoved``), as after its cache timeout.
        The next advert of the address makes it appear afresh."""
        return bool(self._control().RemoveDevice(adapter, address.upper(),
                                                 timeout=_CALL_TIMEOUT))


def _plain(value: Any) -> Any:
    if isinstance(value, dbus.ByteArray | bytes):
        return bytes(value)
    if isinstance(value, dbus.Boolean):
        return bool(value)
    if isinstance(value, dbus.String | dbus.ObjectPath):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------
# bleak side: collect detection callbacks and wait for them inside the event loop


@dataclass(frozen=True)
class Detection:
    device: BLEDevice
    adv: AdvertisementData
    at: float  # time.monotonic() when bleak called back

    @property
    def address(self) -> str:
        return self.device.address


class Detections:
    """A ``detection_callback`` for ``BleakScanner`` that records every call.

    ``await detections.wait_for(pred)`` returns the first not yet consumed detection that
    matches (or raises AssertionError after ``timeout``); consumed ones are skipped later,
    so a test can wait for "the next callback with rssi -40".
    """

    def __init__(self) -> None:
        self.items: list[Detection] = []
        self._consumed = 0
        self._event: asyncio.Event | None = None

    def __call__(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self.items.append(Detection(device, adv, time.monotonic()))
        if self._event is not None:
            self._event.set()

    def __len__(self) -> int:
        return len(self.items)

    def for_address(self, address: str) -> list[Detection]:
        return [d for d in self.items if d.address.upper() == address.upper()]

    async def wait_for(self, predicate: Callable[[Detection], bool] = lambda _d: True,
                       timeout: float = 5.0) -> Detection:
        if self._event is None:
            self._event = asyncio.Event()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i in range(self._consumed, len(self.items)):
                if predicate(self.items[i]):
                    self._consumed = i + 1
                    return self.items[i]
            self._event.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for a detection; "
                    f"{len(self.items)} seen, last: {self.items[-1:]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    async def wait_count(self, n: int, timeout: float = 10.0) -> None:
        """Wait until at least ``n`` callbacks were recorded in total."""
        if self._event is None:
            self._event = asyncio.Event()
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.items) < n:
            self._event.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:g} s: {len(self.items)}/{n} "
                                     "detections")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    async def quiet(self, settle: float = 0.0) -> list[Detection]:
        """Callbacks that arrive once bleak has handled everything the mock sent so far
        (``sync_bleak``), plus ``settle`` s; ``== []`` proves an advert was not reported."""
        start = len(self.items)
        await sync_bleak()
        if settle:
            await asyncio.sleep(settle)
        return self.items[start:]


async def sync_bleak() -> None:
    """A round trip on bleak's own D-Bus connection. The mock sends its signals before it
    answers a control call, and the bus delivers in order, so afterwards bleak has handled
    every signal caused by earlier control calls (e.g. it knows a re-added adapter)."""
    manager = await get_global_bluez_manager()
    bus = manager._bus
    assert bus is not None
    reply = await bus.call(Message(destination="org.freedesktop.DBus",
                                   path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="GetId"))
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body


async def eventually(predicate: Callable[[], object], timeout: float = 5.0,
                     what: str = "condition", interval: float = 0.01) -> None:
    """``wait_for`` for use inside the event loop (never blocks it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
