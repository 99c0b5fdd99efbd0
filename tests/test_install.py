"""deploy/install.sh as written, in a clean root: a Debian made by debootstrap (no Python,
no mosquitto, no storegate), the script run as an operator would (`--store store-0042`
from a checkout); again (idempotent: nothing changes); again once central's certificates
are in (the bridge is on); what it installed started as its units would start it
(tests/test_install_boot.sh: units verified, Debian's stock mosquitto.conf plus the
drop-in, bridged to a stand-in central, the gateway as its user with Type=notify,
logins over TLS, a backup, SIGTERM); the root booted with systemd as PID 1
(storegate.service active only after READY=1, watchdog keep-alives, the backup unit, a
drained stop); --upgrade (outbox and identities kept), --uninstall (data kept) and
--purge. Every shell script shipped passes shellcheck.

The clean root: ``debootstrap bookworm`` once, kept as a tarball under
/var/cache/storegate-ci (SG_CI_CACHE) so CI reruns start from it in seconds; apt's
packages and pip's downloads are cached there too. The chroot runs in its own mount
namespace (its /proc, /dev go away with it) and, to boot, its own network namespace: the
broker's ports never meet the host's. Needs root, debootstrap and unshare (scripts/setup).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.store_broker import TestCA

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SG_CI_CACHE", "/var/cache/storegate-ci"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BOOT = Path(__file__).with_name("test_install_boot.sh")
LAN = "192.168.10.2"  # store-0042's [broker] host: the broker certificate names it
SCRIPTS = [REPO / "deploy" / "install.sh", BOOT, REPO / "scripts" / "setup",
           REPO / "scripts" / "demo", REPO / "scripts" / "test", REPO / ".ci" / "run"]
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
             # pip trusts the system's CAs (with the site's, above), not only its own
             "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"}


def test_every_shell_script_passes_shellcheck() -> None:
    shipped = sorted({*SCRIPTS, *(REPO / "deploy").rglob("*.sh"), *(REPO / "scripts").glob("*")})
    assert len(shipped) >= 6
    result = subprocess.run(["shellcheck", "--shell=bash", *map(str, shipped)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the clean root ----------------------------------------------------------------------


def _arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def base_tarball() -> Path:
    """debootstrap's Debian, made once and cached (several minutes the first time)."""
    tarball = CACHE / f"debian-{SUITE}-{_arch()}.tar.gz"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / "build-root"
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run(["debootstrap", f"--arch={_arch()}", SUITE, str(build), MIRROR],
                   check=True, capture_output=True)
    part = tarball.with_suffix(".part")
    subprocess.run(["tar", "-C", str(build), "-czf", str(part), "."], check=True)
    part.replace(tarball)
    shutil.rmtree(build)
    return tarball


def _copy_checkout(dest: Path) -> None:
    """The checkout an operator clones: what install.sh reads (sources, deploy/,
    firmware-configs/), not this machine's virtualenv or caches."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache",
                                    ".mypy_cache", ".ruff_cache", "*.egg-info", "build")
    for name in ("src", "deploy", "firmware-configs"):
        shutil.copytree(REPO / name, dest / name, symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)


@dataclass
class Root:
    path: Path

    def run(self, *argv: str, net: bool = True, timeout: float = 900) -> str:
        """``argv`` in the chroot, in a mount namespace of its own; without ``net``
        also a network namespace of its own (loopback and the store LAN address)."""
        r = str(self.path)
        caches = {CACHE / "apt": f"{r}/var/cache/apt/archives",
                  CACHE / "pip": f"{r}/root/.cache/pip"}
        mounts = [f"mount --rbind /dev {r}/dev", f"mount -t proc proc {r}/proc",
                  f"mount -t sysfs sysfs {r}/sys", f"mount -t tmpfs tmpfs {r}/run"]
        for src, dst in caches.items():
            src.mkdir(parents=True, exist_ok=True)
            Path(dst).mkdir(parents=True, exist_ok=True)
            mounts.append(f"mount --bind {src} {dst}")
        if not net:
            mounts += ["ip link set lo up", f"ip addr add {LAN}/32 dev lo"]
        script = " && ".join([*mounts, 'exec chroot "$0" "$@"'])
        # --pid: when the command ends, whatever it left running (a daemon a package
        # started, the broker of a failed boot) ends with it, and its pipes close
        unshare = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
        if not net:
            unshare.append("--net")
        result = subprocess.run([*unshare, "sh", "-c", script, r, *argv], env=CLEAN_ENV,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}\n--- stdout\n"
                                 f"{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}")
        return result.stdout

    def sha(self, path: str) -> str:
        return hashlib.sha256((self.path / path.lstrip("/")).read_bytes()).hexdigest()

    @contextlib.contextmanager
    def booted(self) -> Iterator[Booted]:
        """systemd as PID 1 of the root, in its own PID, mount and network namespaces
        (cgroup2 mounted for it): the box as it boots, every enabled unit started."""
        r = str(self.path)
        script = " && ".join([
            # the root a mount point of its own, as on a real box: systemd's per-unit
            # namespaces (ProtectSystem=, PrivateTmp=...) remount "/" and need that
            f"mount --bind {r} {r}",
            f"mount --rbind /dev {r}/dev", f"mount -t proc proc {r}/proc",
            f"mount -t sysfs sysfs {r}/sys", f"mount -t tmpfs tmpfs {r}/run",
            f"mount -t cgroup2 none {r}/sys/fs/cgroup", "ip link set lo up",
            f"ip addr add {LAN}/32 dev lo",
            "exec env -i container=storegate-ci PATH=/usr/sbin:/usr/bin:/sbin:/bin "
            f"chroot {r} /lib/systemd/systemd"])
        # --kill-child: should this process die before the finally below, the box's init
        # (unshare's child, sh exec'd into systemd) gets SIGKILL from the kernel
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid",
                                 "--fork", "--kill-child", "--net", "sh", "-c", script],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        init = ""
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                init = children.read_text().split()[0] if children.exists() and \
                    children.read_text().split() else ""
                if init and Path(f"/proc/{init}/cmdline").read_text().startswith(
                        "/lib/systemd/systemd"):  # sh has exec'd it: PID 1 in there
                    break
                time.sleep(0.1)
            assert init and Path(f"/proc/{init}/cmdline").read_text().startswith(
                "/lib/systemd/systemd"), "systemd did not start in the root"
            box = Booted(int(init))
            try:
                yield box
            except BaseException:  # what a failure needs to be understood
                for argv in (("systemctl", "--failed", "--no-pager"),
                             ("systemctl", "status", "storegate", "mosquitto", "--no-pager"),
                             ("journalctl", "-b", "--no-pager", "-n", "150")):
                    print(box.run(*argv, check=False, timeout=30))
                raise
        finally:
            # Killing unshare alone leaves the box running (systemd is its child, not
            # it): SIGKILL the box's init, PID 1 of its namespace, and everything in
            # the namespace goes with it; then unshare, which waits for it.
            if init:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(init), signal.SIGKILL)
            proc.kill()
            proc.wait()
            if init:
                gone = time.monotonic() + 30
                while _is_box_init(init) and time.monotonic() < gone:
                    time.sleep(0.1)
                assert not _is_box_init(init), f"the box's systemd ({init}) outlived the test"


def _is_box_init(pid: str) -> bool:
    """``pid`` is still the box's systemd (not gone, not a zombie, not reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and cmdline.startswith(
        "/lib/systemd/systemd")


@dataclass
class Booted:
    init: int  # systemd, as the host sees it

    def run(self, *argv: str, check: bool = True, timeout: float = 120) -> str:
        result = subprocess.run(["nsenter", "-t", str(self.init), "-m", "-p", "-n", "-r",
                                 "-w", *argv], env=CLEAN_ENV, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}\n{result.stdout}"
                                 f"\n{result.stderr}")
        return result.stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", unit, "-p", prop, "--value")

    def wait_for(self, what: str, ok: Callable[[], bool], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not ok():
            assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Root]:
    if os.geteuid() != 0:
        pytest.skip("a chroot needs root (CI runs as root)")
    for tool in ("debootstrap", "unshare", "chroot", "ip"):
        assert shutil.which(tool), f"{tool} is missing: scripts/setup installs it"
    path = tmp_path_factory.mktemp("clean-root")
    subprocess.run(["tar", "-C", str(path), "--numeric-owner", "-xzf", str(base_tarball())],
                   check=True)
    shutil.copy2("/etc/resolv.conf", path / "etc" / "resolv.conf")
    # The site's own CA certificates, as an operator's network would need them (this CI
    # network inspects TLS): ca-certificates, installed by install.sh, picks them up.
    site_cas = Path("/usr/local/share/ca-certificates")
    if site_cas.is_dir():
        shutil.copytree(site_cas, path / "usr" / "local" / "share" / "ca-certificates",
                        dirs_exist_ok=True)
    # a chroot, not a booted box: packages' maintainer scripts must not start daemons
    # on the host's network (what policy-rc.d is for); install.sh itself starts nothing
    # without systemd
    policy = path / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _copy_checkout(path / "root" / "storegate")
    try:
        yield Root(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


CENTRAL_CONF = """\
# A broker acting as central for the bridge: TLS with client certificates on 8884 (what
# the store's bridge uses), plain on 1885 for the test's subscriber.
user root
per_listener_settings true
persistence false
log_dest file /srv/central/central.log
listener 8884 127.0.0.1
cafile /srv/central/ca.pem
certfile /srv/central/central.pem
keyfile /srv/central/central.key
require_certificate true
use_identity_as_username true
listener 1885 127.0.0.1
allow_anonymous true
"""


def give_central(root: Root) -> None:
    """What central hands a store for its bridge (central's CA, the store's client
    certificate and key, central's address), and a broker acting as central."""
    srv = root.path / "srv" / "central"
    srv.mkdir(parents=True)
    ca = TestCA(srv)
    ca.issue("central", srv / "central.pem", srv / "central.key", server=True)
    certs = root.path / "etc" / "mosquitto" / "certs"
    ca.issue("store-0042", certs / "store-0042.pem", certs / "store-0042.key", server=False)
    shutil.copy2(ca.path, certs / "central-ca.pem")
    (srv / "central.conf").write_text(CENTRAL_CONF)
    root.run("chown", "root:mosquitto", "/etc/mosquitto/certs/store-0042.key")
    (certs / "store-0042.key").chmod(0o640)
    fleet = root.path / "root" / "storegate" / "firmware-configs" / "store-0042" / "store.toml"
    text = fleet.read_text()
    assert 'bridge_address = "central-mqtt.example.net:8883"' in text
    fleet.write_text(text.replace("central-mqtt.example.net:8883", "127.0.0.1:8884"))


def test_install_boot_upgrade_uninstall_in_a_clean_root(root: Root) -> None:
    t0 = time.monotonic()
    out = root.run("/root/storegate/deploy/install.sh", "--store", "store-0042")
    took = {"first install": time.monotonic() - t0}
    assert "installing packages:" in out and "building the wheel" in out, out
    assert "bridge to central OFF" in out
    assert "done: storegate" in out

    # idempotent: again, nothing changes (no new secrets, same password files)
    watched = ["/etc/storegate/secrets/fleet.json", "/etc/mosquitto/storegate.passwd",
               "/etc/mosquitto/scanners.passwd", "/etc/mosquitto/conf.d/storegate.conf",
               "/etc/storegate/secrets.env", "/etc/storegate/tls/store-broker.pem"]
    before = {f: root.sha(f) for f in watched}
    again = root.run("/root/storegate/deploy/install.sh", "--store", "store-0042")
    assert "already in /opt/storegate/venv" in again
    assert "secrets: 0 new, 15 kept" in again
    assert {f: root.sha(f) for f in watched} == before

    # central's certificates arrive: run it again, the bridge is on
    give_central(root)
    t0 = time.monotonic()
    bridged = root.run("/root/storegate/deploy/install.sh", "--store", "store-0042")
    took["again, with the bridge"] = time.monotonic() - t0
    assert "bridge to central: 127.0.0.1:8884" in bridged
    drop_in = (root.path / "etc/mosquitto/conf.d/storegate.conf").read_text()
    assert drop_in.startswith("# Rendered by deploy/install.sh")
    # the bridge forwards the store's gateways by name, never `+` (a node's name)
    assert "topic storegate/v1/store-0042/gw-1/events/# out 1" in drop_in
    assert "topic storegate/v1/store-0042/gw-1/status out 1" in drop_in
    assert "/+/" not in "".join(ln for ln in drop_in.splitlines() if ln.startswith("topic"))
    stop = (root.path / "etc/systemd/system/storegate.service.d/stop-timeout.conf").read_text()
    assert "TimeoutStopSec=60" in stop  # the example's 10 s drain: the unit's own 60 s

    # boot it the way systemd would, in a network of its own
    t0 = time.monotonic()
    boot = root.run("/bin/bash", "-c", BOOT.read_text(), net=False, timeout=300)
    took["boot to bridged and stopped"] = time.monotonic() - t0
    for check in ("path", "units", "mosquitto", "bridge-up", "connected", "status-on-run",
                  "notify", "birth", "bridged", "logins", "backup", "stopped"):
        assert f"CHECK {check} ok" in boot, boot

    # and under systemd itself, as the box boots: Type=notify, the watchdog, the drain
    t0 = time.monotonic()
    with root.booted() as box:
        box.wait_for("systemd up", lambda: box.run(
            "systemctl", "is-system-running", check=False) in ("running", "degraded"), 120)
        box.wait_for("storegate.service active (READY=1 under Type=notify)",
                     lambda: box.show("storegate.service", "ActiveState") == "active")
        took["boot under systemd to active"] = time.monotonic() - t0
        assert box.show("mosquitto.service", "ActiveState") == "active"
        box.wait_for("storegate status: connected", lambda: subprocess.run(
            ["nsenter", "-t", str(box.init), "-m", "-p", "-n", "-r", "-w", "storegate",
             "status", "-c", "/etc/storegate/store.toml"], capture_output=True,
            check=False).returncode == 0)
        main_pid = box.show("storegate.service", "MainPID")
        first = int(box.show("storegate.service", "WatchdogTimestampMonotonic"))
        box.wait_for("a later watchdog keep-alive", lambda: int(
            box.show("storegate.service", "WatchdogTimestampMonotonic")) > first)
        assert box.show("storegate.service", "MainPID") == main_pid  # never restarted
        assert box.show("storegate.service", "NRestarts") == "0"
        box.run("systemctl", "start", "storegate-backup.service")
        assert box.show("storegate-backup.service", "Result") == "success"
        assert box.run("test", "-s", "/var/backups/storegate/storegate-latest.tar") == ""
        exposure = box.run("systemd-analyze", "security", "storegate.service", "--no-pager",
                           check=False).splitlines()[-1:]
        box.run("systemctl", "stop", "storegate.service")
        assert box.show("storegate.service", "Result") == "success"
        assert box.show("storegate.service", "ExecMainStatus") == "0"
        journal = box.run("journalctl", "-u", "storegate.service", "--no-pager", "-o", "cat")
        assert "gateway stopped (drained" in journal, journal[-3000:]
    # the booted box is gone with everything it ran (booted() asserts its init is)
    assert not _is_box_init(str(box.init))
    print("TIMING " + ", ".join(f"{k}: {v:.0f} s" for k, v in took.items()))
    print("SECURITY", *exposure)

    # --upgrade: a new release; the outbox and the identity store are untouched
    kept = ["/var/lib/storegate/outbox.db", "/var/lib/storegate/outbox.identities.db",
            "/var/lib/storegate/outbox.seal.key"]
    data = {f: root.sha(f) for f in kept}
    upgraded = root.run("/root/storegate/deploy/install.sh", "--upgrade")  # store from config
    assert "installing storegate-" in upgraded
    assert {f: root.sha(f) for f in kept} == data

    # --uninstall leaves config and data; --purge removes them
    root.run("/root/storegate/deploy/install.sh", "--uninstall")
    assert not (root.path / "opt" / "storegate").exists()
    assert not (root.path / "usr" / "local" / "bin" / "storegate").exists()
    assert not (root.path / "etc" / "mosquitto" / "conf.d" / "storegate.conf").exists()
    assert {f: root.sha(f) for f in kept} == data
    assert (root.path / "etc" / "storegate" / "store.toml").exists()
    root.run("/root/storegate/deploy/install.sh", "--uninstall", "--purge")
    assert not (root.path / "var" / "lib" / "storegate").exists()
    assert not (root.path / "etc" / "storegate").exists()
    certs = root.path / "etc" / "mosquitto" / "certs"
    left = sorted(p.name for p in certs.iterdir() if p.name != "README")  # Debian's
    assert left == [], left  # central's CA, the bridge's certificate and key: gone too
    assert not (root.path / "var" / "lib" / "mosquitto" / "mosquitto.db").exists()


def test_the_container_definition_is_consistent() -> None:
    """Not built here (no image registry to pull the base from): what can be checked
    without building it. Every instruction is a Containerfile instruction, every COPY
    source exists, the image runs what the systemd unit runs and stops the same way."""
    text = (REPO / "deploy" / "container" / "Containerfile").read_text()
    lines, cont = [], ""
    for raw in text.splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        cont += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            lines.append(cont.strip())
            cont = ""
    known = {"FROM", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "STOPSIGNAL",
             "HEALTHCHECK", "ENTRYPOINT", "CMD", "ENV", "ARG", "LABEL", "EXPOSE"}
    assert {ln.split()[0] for ln in lines} <= known, lines
    for ln in lines:
        if ln.startswith("COPY") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (REPO / src).exists(), src
    assert "STOPSIGNAL SIGTERM" in lines
    assert 'CMD ["run", "--config", "/etc/storegate/store.toml"]' in lines
    assert any(ln.startswith("FROM docker.io/library/debian:bookworm") for ln in lines)
    assert not any("pip install" in ln and "[dev]" in ln for ln in lines)  # no test tools
