"""``storegate firmware validate|render``: a store's device folder (firmware-configs/<store>/)
checked as a whole, and the per-device and broker files rendered from it.

The folder (docs/firmware.md):

    store.toml     the store id, its gateways, the broker as nodes reach it, the Wi-Fi
    scanners.toml  [[node]]: ESP32 scanner nodes (esphome or espresense firmware)
    beacons.toml   [[beacon]]: the file the gateway reads (presence.beacons_file)
    lanes.toml     [[lane]]: POS lanes, as the gateway config's [[pos.lanes]] (optional)

Beacons and lanes are validated by the very functions the gateway uses at start, so a
folder that validates is one the gateway loads. Secrets (broker logins, OTA passwords)
are generated once into the secrets file, kept across renders and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from storegate.app.pos import load_template
from storegate.app.presence_files import BeaconRecord, load_beacons, read_data_file
from storegate.config import Config, PosLaneConfig, toml_problem
from storegate.core.firmware.fleet import (
    BeaconFacts,
    LaneFacts,
    NodeRecord,
    NodesFile,
    Problem,
    StoreFile,
    cross_check,
)
from storegate.core.firmware.render import (
    Secrets,
    complete,
    esphome_secrets_yaml,
    esphome_yaml,
    espresense_settings,
    gateway_env,
    password_file,
)
from storegate.errors import DataFileError, UsageError

STORE_FILE: Final = "store.toml"
NODES_FILE: Final = "scanners.toml"
BEACONS_FILE: Final = "beacons.toml"
LANES_FILE: Final = "lanes.toml"
SECRETS_FILE: Final = "secrets.json"
SECRET_MODE: Final = 0o600
PUBLIC_MODE: Final = 0o644


@dataclass(frozen=True, slots=True)
class Fleet:
    folder: Path
    store: StoreFile
    nodes: list[NodeRecord]
    beacons: list[BeaconFacts]
    lanes: list[PosLaneConfig]

    def summary(self) -> str:
        kinds = {k: sum(1 for n in self.nodes if n.firmware == k)
                 for k in ("esphome", "espresense")}
        zone_beacons = sum(1 for b in self.beacons if b.kind == "zone")
        return (f"{self.store.store.id}: {len(self.store.store.gateways)} gateway(s), "
                f"{len(self.nodes)} scanner node(s) ({kinds['esphome']} esphome, "
                f"{kinds['espresense']} espresense), {len(self.beacons)} beacon rule(s) "
                f"({zone_beacons} zone), {len(self.lanes)} POS lane(s)")


class FleetError(DataFileError):
    """The folder has problems between its files: all of them, one a line."""

    def __init__(self, folder: Path, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(str(folder), "\n".join(f"  {p}" for p in problems)
                         if len(problems) > 1 else str(problems[0]))


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_data_file(path))
    except (ValueError, RecursionError) as exc:
        raise DataFileError(str(path), f"not valid TOML: {toml_problem(exc)}") from exc


def _first(exc: ValidationError, path: Path, prefix: str = "") -> DataFileError:
    e = exc.errors()[0]
    key = prefix + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e["loc"])
    return DataFileError(str(path), e["msg"], key.lstrip(".") or None)


def load_fleet(folder: Path) -> Fleet:
    """Every file of the folder, each validated, then checked against each other.
    Raises DataFileError (one file) or FleetError (between files)."""
    if not folder.is_dir():
        raise DataFileError(str(folder), "not a folder (firmware-configs/<store>/)")
    path = folder / STORE_FILE
    try:
        store = StoreFile.model_validate(_toml(path))
    except ValidationError as exc:
        raise _first(exc, path) from exc
    path = folder / NODES_FILE
    try:
        nodes = NodesFile.model_validate(_toml(path)).node
    except ValidationError as exc:
        raise _first(exc, path) from exc
    beacons: list[BeaconFacts] = []
    path = folder / BEACONS_FILE
    if path.exists():
        load_beacons(path)  # exactly what the gateway does at start
        for i, rec in enumerate(_toml(path).get("beacon", [])):
            try:
                r = BeaconRecord.model_validate(rec)
            except ValidationError as exc:  # pragma: no cover - load_beacons said it
                raise _first(exc, path, f"beacon[{i}]") from exc
            beacons.append(BeaconFacts(r.label, r.kind, r.zone, r.tx_power_dbm,
                                       r.interval_ms,
                                       tuple(r.position) if r.position else None))
    lanes: list[PosLaneConfig] = []
    path = folder / LANES_FILE
    if path.exists():
        data = _toml(path)
        if set(data) - {"lane"} or not isinstance(data.get("lane", []), list):
            raise DataFileError(str(path), "only [[lane]] tables (as [[pos.lanes]])")
        for i, given in enumerate(data.get("lane", [])):
            raw = given
            if isinstance(given, dict) and isinstance(given.get("template"), str):
                t = Path(given["template"])  # relative to the folder, as in the config
                raw = {**given, "template": str(t if t.is_absolute() else folder / t)}
            try:
                lane = PosLaneConfig.model_validate(raw)
            except ValidationError as exc:
                raise _first(exc, path, f"lane[{i}]") from exc
            if lane.template is not None:
                load_template(lane.template)  # as the gateway reads it
            lanes.append(lane)
    problems = cross_check(store, nodes, beacons,
                           [LaneFacts(x.id, x.checkout_zone) for x in lanes])
    if problems:
        raise FleetError(folder, problems)
    return Fleet(folder, store, nodes, beacons, lanes)


def check_against_config(fleet: Fleet, config: Config) -> list[Problem]:
    """What a gateway config says that the folder contradicts."""
    out: list[Problem] = []
    src = "gateway config"
    if config.store_id != fleet.store.store.id:
        out.append(Problem(src, "store_id", f"{config.store_id!r}, but the folder is "
                           f"{fleet.store.store.id!r}"))
    if config.gateway_id not in fleet.store.store.gateways:
        out.append(Problem(src, "gateway_id", f"{config.gateway_id!r} is not in "
                           f"store.toml's gateways {fleet.store.store.gateways}"))
    names = {n.name for n in fleet.nodes}
    for z in config.presence.zones:
        for s in z.scanners:
            node = next((n for n in fleet.nodes if n.name == s), None)
            if node is not None and node.zone != z.id:
                out.append(Problem(src, f"presence.zones {z.id}", f"scanner {s!r} is in "
                                   f"zone {node.zone!r} in scanners.toml"))
    adapters = {a.scanner for a in config.sources.ble.adapters} \
        if config.sources.ble.enabled else set()
    for z in config.presence.zones:
        for s in z.scanners:
            if s not in names and s not in adapters:
                out.append(Problem(src, f"presence.zones {z.id}", f"scanner {s!r} is "
                                   "neither a node in scanners.toml nor a BLE adapter"))
    for n in fleet.nodes:
        placed = config.calibration.scanners.get(n.name)
        if placed is not None and n.position is not None \
                and tuple(placed) != tuple(n.position):
            out.append(Problem(src, f"calibration.scanners {n.name}", f"{list(placed)}, but "
                               f"scanners.toml places it at {list(n.position)}"))
    return out


# --- render ------------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int) -> bool:
    """Atomically, with ``mode`` from the start; False when the content is unchanged."""
    try:
        if path.read_text("utf-8") == text:
            os.chmod(path, mode)
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    return True


def _read_secrets(path: Path) -> Secrets:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return Secrets()
    except OSError as exc:
        raise DataFileError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    try:
        return Secrets.from_obj(json.loads(text))
    except ValueError as exc:
        raise DataFileError(str(path), f"not a storegate secrets file: {exc}") from exc


def _old_lines(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError:
        return {}
    return {ln.partition(":")[0]: ln for ln in lines if ":" in ln}


@dataclass(frozen=True, slots=True)
class RenderReport:
    written: int
    unchanged: int
    created: int
    kept: int
    removed: int
    secrets: Path
    warnings: list[str]


def render(fleet: Fleet, out: Path, *, secrets_path: Path | None = None,
           ca_file: Path | None = None,
           rand: Callable[[int], bytes] = os.urandom) -> RenderReport:
    secrets_path = secrets_path or out / SECRETS_FILE
    ca_pem = None
    if ca_file is not None:
        try:
            ca_pem = ca_file.read_text("ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFileError(str(ca_file), f"cannot read the store CA: {exc}") from exc
        if "-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise DataFileError(str(ca_file), "not a PEM certificate")
    gateways = fleet.store.store.gateways
    esphome = [n for n in fleet.nodes if n.firmware == "esphome"]
    espresense = [n for n in fleet.nodes if n.firmware == "espresense"]
    change = complete(_read_secrets(secrets_path), [*gateways, *(n.name for n in fleet.nodes)],
                      [n.name for n in esphome], rand)
    s = change.secrets
    files: dict[Path, tuple[str, int]] = {secrets_path: (s.to_json() + "\n", SECRET_MODE)}
    for n in esphome:
        files[out / "esphome" / f"{n.name}.yaml"] = (esphome_yaml(fleet.store, n, ca_pem),
                                                     PUBLIC_MODE)
    if esphome:
        files[out / "esphome" / "secrets.yaml"] = (
            esphome_secrets_yaml(fleet.store, esphome, s), SECRET_MODE)
    for n in espresense:
        files[out / "espresense" / f"{n.name}.json"] = (
            json.dumps(espresense_settings(fleet.store, n, s), indent=2) + "\n", SECRET_MODE)
    for name, logins in (("storegate.passwd", gateways),
                         ("scanners.passwd", [n.name for n in fleet.nodes])):
        path = out / "broker" / name
        files[path] = (password_file(logins, s, rand, _old_lines(path)), SECRET_MODE)
    for g in gateways:
        files[out / "gateways" / f"{g}.env"] = (gateway_env(g, s), SECRET_MODE)
    written = sum(_write(p, text, mode) for p, (text, mode) in files.items())
    warnings = []
    if s.wifi_password is None and fleet.nodes:
        warnings.append(f"no Wi-Fi password for the nodes: set \"wifi_password\" in "
                        f"{secrets_path} and render again")
    if esphome and ca_pem is None:
        warnings.append("no store CA given (--ca): the ESPHome nodes cannot check the broker")
    return RenderReport(written, len(files) - written, change.created, change.kept,
                        change.removed, secrets_path, warnings)


# --- command line -----------------------------------------------------------------------


def add_parser(sub: Any, add_config: Callable[[argparse.ArgumentParser], None],
               config_of: Callable[[argparse.Namespace], Config]) -> None:
    pf = sub.add_parser("firmware", help="a store's device fleet (firmware-configs/<store>/):"
                        " validate it, render the device and broker files")
    fsub = pf.add_subparsers(dest="firmware_command", required=True)
    p = fsub.add_parser("validate", help="check a store's folder (exit 2 if broken)")
    p.add_argument("dir", metavar="DIR", type=Path)
    add_config(p)

    def validate(args: argparse.Namespace) -> int:
        fleet = load_fleet(args.dir)
        if args.config or os.environ.get("STOREGATE_CONFIG"):
            problems = check_against_config(fleet, config_of(args))
            if problems:
                raise FleetError(args.dir, problems)
        print(f"{fleet.summary()}: valid")
        return 0

    p.set_defaults(func=validate)

    p = fsub.add_parser("render", help="write ESPHome YAML, ESPresense settings, broker "
                        "password files and gateway logins (secrets made once, kept)")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--out", metavar="OUT", type=Path, required=True)
    p.add_argument("--secrets", metavar="FILE", type=Path,
                   help=f"the store's secrets (default OUT/{SECRETS_FILE}; mode 0600)")
    p.add_argument("--ca", metavar="FILE", type=Path,
                   help="the store CA certificate the nodes check the broker with")

    def run(args: argparse.Namespace) -> int:
        fleet = load_fleet(args.dir)
        if args.out.resolve() == args.dir.resolve():
            raise UsageError("--out: not the fleet folder itself (it holds no secrets)")
        report = render(fleet, args.out, secrets_path=args.secrets, ca_file=args.ca)
        print(f"{fleet.summary()}: {report.written} file(s) written, {report.unchanged} "
              f"unchanged in {args.out}; secrets: {report.created} new, {report.kept} kept, "
              f"{report.removed} dropped ({report.secrets})")
        for w in report.warnings:
            print(f"warning: {w}")
        return 0

    p.set_defaults(func=run)
