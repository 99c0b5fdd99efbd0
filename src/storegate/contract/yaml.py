"""A minimal YAML emitter for generated documents (no dependency needed).

Mappings and sequences in block style; every scalar is written as JSON, which YAML
1.2 reads as the same value, so quoting rules never bite.
"""

from __future__ import annotations

import json
from typing import Any


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            k = str(key) if str(key).replace("_", "").isalnum() else _scalar(str(key))
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}{k}:")
                _emit(item, indent + 1, out)
            elif isinstance(item, dict | list):
                out.append(f"{pad}{k}: {'{}' if isinstance(item, dict) else '[]'}")
            else:
                out.append(f"{pad}{k}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                sub: list[str] = []
                _emit(item, indent + 1, sub)
                first = sub[0].lstrip()
                out.append(f"{pad}- {first}")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_scalar(item)}")
    else:
        out.append(f"{pad}{_scalar(value)}")


def dump(document: dict[str, Any]) -> str:
    out: list[str] = []
    _emit(document, 0, out)
    return "\n".join(out) + "\n"
