"""The layers, checked: who may import whom under ``src/storegate``.

The folder names are the architecture (README, "Layout"): core <- adapters <- app. This
test reads every module's imports with ``ast`` -- those inside functions and under
``TYPE_CHECKING`` too -- and fails naming the file, the line, the import and the rule.

    module                       may import from storegate
    core/                        core/
    contract/                    core/, contract/
    sim/  (pure simulation)      core/, sim/
    adapters/                    core/, adapters/, errors, log_once
    config                       core/, errors
    errors, log_once, __init__,  nothing
      defaults/
    app/, __main__               anything (the composition root, the CLI, the demo's live
                                 simulators: app/sim_store.py, app/sim_lane.py)

core/ and sim/ are pure in what they take from outside storegate as well: only the
stdlib modules and third-party libraries listed below, so no clock (``time``), no
files (``os``, ``pathlib``, ``io``), no sockets, threads, processes or drivers (paho,
bleak, serial, sqlite3); and core/ calls no ``open()``/``print()``, no
``datetime.now()``, no ``Path.read_text()`` and the like. Time and entropy come in as
arguments. A pure stdlib module core/ needs is added to ``PURE_STDLIB`` here, on purpose.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SRC: Final = Path(__file__).resolve().parents[1] / "src"
PACKAGE: Final = SRC / "storegate"

# What pure code may take from the stdlib: values in, values out.
PURE_STDLIB: Final = frozenset({
    "__future__", "array", "base64", "binascii",
    "bisect",  # core/histogram.py: a bucket by binary search
    "codecs", "collections", "dataclasses",
    "datetime",  # fromtimestamp and formatting only; the clock reads are checked below
    "enum", "functools", "hashlib", "heapq", "hmac", "json", "math", "re", "struct",
    "tomllib",  # tomllib.loads on text handed in
    "typing",
})
# Third-party libraries that do no I/O: validation and cryptographic primitives.
PURE_THIRD_PARTY: Final = frozenset({"pydantic", "cryptography"})
# The simulation also draws from seeded generators and summarises.
SIM_EXTRA: Final = frozenset({"random", "statistics"})


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    may_import: tuple[str, ...]  # storegate packages/modules (and what lies below them)
    external: frozenset[str] | None = None  # top-level outside modules; None: any

    def allows(self, target: str) -> bool:
        if target == "storegate" or target.startswith("storegate."):
            return any(target == m or target.startswith(m + ".") for m in self.may_import)
        return self.external is None or target.partition(".")[0] in self.external

    def rule(self) -> str:
        inside = ", ".join(self.may_import) or "nothing from storegate"
        outside = "" if self.external is None else \
            " and, from outside, only PURE_STDLIB/PURE_THIRD_PARTY in tests/test_layers.py"
        return f"{self.name} may import {inside}{outside}"


CORE: Final = Layer("core/", ("storegate.core",), PURE_STDLIB | PURE_THIRD_PARTY)
CONTRACT: Final = Layer("contract/", ("storegate.core", "storegate.contract"))
SIM: Final = Layer("sim/", ("storegate.core", "storegate.sim"),
                   PURE_STDLIB | PURE_THIRD_PARTY | SIM_EXTRA)
ADAPTERS: Final = Layer("adapters/", ("storegate.core", "storegate.adapters",
                                      "storegate.errors", "storegate.log_once"))
CONFIG: Final = Layer("config", ("storegate.core", "storegate.errors"))
LEAF: Final = Layer("a leaf module", ())
APP: Final = Layer("app/", ("storegate",))

# Every module is placed here, by its own name or the package it lies in.
PLACES: Final = {
    "storegate.core": CORE,
    "storegate.contract": CONTRACT,
    "storegate.sim": SIM,
    "storegate.adapters": ADAPTERS,
    "storegate.app": APP,
    "storegate.__main__": APP,  # the entry point: runs the CLI
    "storegate.config": CONFIG,  # validated where data enters; read by app/
    "storegate.errors": LEAF,  # the error hierarchy every layer raises
    "storegate.log_once": LEAF,  # a logging helper shared by adapters and app
    "storegate.defaults": LEAF,  # data: the embedded demo store
    "storegate": LEAF,  # the package root: the version only
}


@dataclass(frozen=True, slots=True)
class Import:
    line: int
    target: str  # dotted module name, relative imports resolved


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Final = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, module: str, *, is_package: bool,
               known: frozenset[str] | set[str] = frozenset()) -> list[Import]:
    """Every import statement anywhere in the module (functions, ``if`` blocks, too)."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [Import(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            for a in node.names:  # ``from storegate.app import logs`` imports a module
                sub = f"{base}.{a.name}"
                out.append(Import(node.lineno, sub if sub in known else base))
    return sorted(out, key=lambda i: i.line)


def place(module: str) -> Layer | None:
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # the bare root places only itself
        layer = PLACES.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return PLACES.get(module)


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(SRC.parent)}:{line}"


def test_every_module_is_placed_in_a_layer() -> None:
    unplaced = [m for m in MODULES if place(m) is None]
    assert not unplaced, f"add these to PLACES in tests/test_layers.py: {unplaced}"


def test_every_import_keeps_to_its_layer() -> None:
    known = set(MODULES)
    broken = []
    for module, path in MODULES.items():
        layer = place(module)
        assert layer is not None
        for imp in imports_of(path.read_text("utf-8"), module,
                              is_package=path.name == "__init__.py", known=known):
            if not layer.allows(imp.target):
                broken.append(f"{where(path, imp.line)} imports {imp.target}: {layer.rule()}")
    assert not broken, "layer rule broken:\n" + "\n".join(broken)


# Calls that read the clock or touch files, whatever was imported to make them.
NO_BUILTINS: Final = frozenset({"open", "print", "input"})
NO_METHODS: Final = frozenset({"read_text", "read_bytes", "write_text", "write_bytes"})
CLOCK_READS: Final = frozenset({"now", "utcnow", "today"})


def impure_calls(source: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in NO_BUILTINS:
            out.append((node.lineno, f"{f.id}()"))
        elif isinstance(f, ast.Attribute) and f.attr in NO_METHODS:
            out.append((node.lineno, f".{f.attr}()"))
        elif isinstance(f, ast.Attribute) and f.attr in CLOCK_READS \
                and ast.unparse(f.value).split(".")[-1] in {"datetime", "date"}:
            out.append((node.lineno, f"{ast.unparse(f)}()"))
    return sorted(out)


def test_core_reads_no_clock_and_no_files() -> None:
    broken = [f"{where(path, line)} calls {call}: core/ is pure (time and data come in "
              "as arguments; the reading is done in adapters/ or app/)"
              for module, path in MODULES.items() if place(module) is CORE
              for line, call in impure_calls(path.read_text("utf-8"))]
    assert not broken, "\n".join(broken)


def test_the_reader_sees_every_kind_of_import() -> None:
    source = (
        "import os.path as p\n"
        "from . import frames\n"
        "from ..ble.capture import Advert\n"
        "from storegate.app import logs\n"
        "def f():\n"
        "    from storegate.adapters.serial_tap import SerialTap\n"
        "if True:\n"
        "    import paho.mqtt.client\n"
    )
    found = imports_of(source, "storegate.core.pos.lane", is_package=False,
                       known={"storegate.core.pos.frames", "storegate.app.logs"})
    assert [(i.line, i.target) for i in found] == [
        (1, "os.path"), (2, "storegate.core.pos.frames"), (3, "storegate.core.ble.capture"),
        (4, "storegate.app.logs"), (6, "storegate.adapters.serial_tap"),
        (8, "paho.mqtt.client"),
    ]
    assert [CORE.allows(i.target) for i in found] == [False, True, True, False, False, False]
    assert impure_calls("import datetime as dt\nopen('x')\ndt.datetime.now()\n"
                        "p.read_text()\nseal.open(b'')\n") \
        == [(2, "open()"), (3, "dt.datetime.now()"), (4, ".read_text()")]
