"""Generate the published contract from the code: JSON Schemas and AsyncAPI 3.0.

``storegate contract write docs/`` refreshes ``docs/asyncapi.yaml`` and
``docs/schemas/*.json``; a test fails when the committed copies are stale, so the
document central teams read is always the one the code implements.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from storegate.contract import yaml
from storegate.core import events as ev
from storegate.core import topics, trust
from storegate.core.commands import COMMANDS

CONTRACT_VERSION: Final = "1.0.0"
_REF: Final = "#/components/schemas/{model}"


def _camel(type_: str) -> str:
    # storegate.visit.entered.v1 -> visitEnteredV1
    parts = type_.split(".")[1:]
    return parts[0] + "".join(x[:1].upper() + x[1:] for x in parts[1:])


def envelope_schema(t: ev.EventType, data_ref: str, *, with_sequence: bool) -> dict[str, Any]:
    """JSON Schema of the CloudEvents envelope of one event type."""
    props: dict[str, Any] = {
        "specversion": {"const": ev.SPEC_VERSION},
        "id": {"type": "string", "format": "uuid", "description": "UUIDv7; dedupe on it."},
        "source": {"type": "string", "pattern": r"^storegate://[^/]+/[^/]+$",
                   "description": "storegate://<store>/<gateway>"},
        "type": {"const": t.name},
        "subject": {"type": "string"},
        "time": {"type": "string", "format": "date-time",
                 "description": "When it happened (UTC), not when it was sent."},
        "datacontenttype": {"const": ev.CONTENT_TYPE},
        "data": {"$ref": data_ref},
    }
    required = ["specversion", "id", "source", "type", "subject", "time",
                "datacontenttype", "data"]
    if with_sequence:
        props["sequence"] = {
            "type": "string",
            "pattern": rf"^[0-9]{{{ev.SEQUENCE_DIGITS}}}$",
            "description": "Per-gateway sequence, zero-padded decimal: monotonic, never "
            "reused, survives restarts; a missing number is a gap.",
        }
        required.insert(4, "sequence")
    return {
        "type": "object",
        "title": f"{t.name} (CloudEvents 1.0, structured JSON)",
        "description": t.summary,
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


def signed_command_schema() -> dict[str, Any]:
    """The envelope every command travels in (core/trust.py)."""
    return {
        "type": "object",
        "title": "Signed command (what is published on a command topic)",
        "description": (
            "Central signs every command with Ed25519; a gateway holds only central's "
            "public keys ([trust] central_keys) and checks, in this order: the topic "
            "(exactly storegate/v1/<store>/commands/<name> or storegate/v1/central/<name>), "
            "the size (trust.max_command_bytes), the key id, the signature over exactly "
            "the bytes in 'signed', that the signed command name and store match the "
            "topic, the time window (trust.max_age_s back, trust.max_future_s ahead), that "
            "the command id was never accepted before (remembered across restarts), the "
            "payload, and for identities that the keys open with its own seal key. "
            "`storegate keys sign` makes one."),
        "properties": {
            "kid": {"type": "string", "pattern": trust.KID_PATTERN.pattern,
                    "description": "Id of central's signing key (keys rotate: gateways "
                    "may trust several)."},
            "signed": {"type": "string", "contentEncoding": "base64url",
                       "description": "base64url (no padding) of the UTF-8 JSON signed "
                       "body (<Command>Signed)."},
            "sig": {"type": "string", "contentEncoding": "base64url",
                    "description": "base64url of the 64-byte Ed25519 signature over the "
                    "decoded 'signed' bytes."},
        },
        "required": ["kid", "signed", "sig"],
        "additionalProperties": False,
    }


def signed_body_schema(name: str, payload_ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "title": f"Signed body of the {name} command",
        "properties": {
            "v": {"const": trust.ENVELOPE_VERSION},
            "id": {"type": "string", "pattern": trust.COMMAND_ID_PATTERN.pattern,
                   "description": "Unique command id: a gateway accepts it once; answers "
                   "carry it as command_id."},
            "command": {"const": name},
            "store": {"type": "string", "description": "The store addressed, or '*' on "
                      "storegate/v1/central/..."},
            "issued_at": {"type": "number", "description": "Epoch seconds when central "
                          "signed it."},
            "payload": {"$ref": payload_ref},
        },
        "required": ["v", "id", "command", "store", "issued_at", "payload"],
        "additionalProperties": False,
    }


def _collect(models_schema: dict[str, Any], into: dict[str, Any]) -> None:
    for name, schema in models_schema.pop("$defs", {}).items():
        into[name] = schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema (2020-12) per event type, keyed by type."""
    out: dict[str, dict[str, Any]] = {}
    for t in ev.CATALOGUE.values():
        data = t.model.model_json_schema(ref_template="#/$defs/{model}")
        defs: dict[str, Any] = {}
        _collect(data, defs)
        defs[t.model.__name__] = data
        schema = envelope_schema(t, f"#/$defs/{t.model.__name__}",
                                 with_sequence=t is not ev.GATEWAY_STATUS)
        out[t.name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://storegate.dev/schemas/{t.name}.json",
            **schema,
            "$defs": dict(sorted(defs.items())),
        }
    return out


def asyncapi() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    params = {
        "store": {"description": "Store id (" + topics.ID_RULE + ")."},
        "gateway": {"description": "Gateway id, unique within the store."},
    }
    by_channel: dict[str, list[ev.EventType]] = {}
    for t in ev.CATALOGUE.values():
        by_channel.setdefault(t.kind, []).append(t)
        data = t.model.model_json_schema(ref_template=_REF)
        _collect(data, schemas)
        schemas[t.model.__name__] = data
        name = _camel(t.name)
        status = t is ev.GATEWAY_STATUS
        schemas[name + "Event"] = envelope_schema(
            t, _REF.format(model=t.model.__name__), with_sequence=not status
        )
        messages[name] = {
            "name": t.name,
            "title": t.name,
            "summary": t.summary,
            "contentType": "application/cloudevents+json; charset=utf-8",
            "payload": {"$ref": f"#/components/schemas/{name}Event"},
            "bindings": {"mqtt": {"bindingVersion": "0.2.0"}},
            "x-retention-priority": t.priority.name.lower(),
        }
    for kind, types in by_channel.items():
        status = kind == "status"
        cid = "status" if status else f"events{kind[:1].upper()}{kind[1:]}"
        address = "storegate/v1/{store}/{gateway}/" + ("status" if status else f"events/{kind}")
        desc = (
            "Retained birth/death certificate of the gateway session: 'online' on "
            "connect, 'offline' as the MQTT Last Will or on clean shutdown."
            if status else
            f"{kind} events, QoS 1, in sequence order, at least once: deduplicate on id."
        )
        channels[cid] = {
            "address": address,
            "description": desc,
            "parameters": params,
            "messages": {
                _camel(t.name): {"$ref": f"#/components/messages/{_camel(t.name)}"}
                for t in types
            },
        }
        operations[f"publish{cid[:1].upper()}{cid[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{cid}"},
            "summary": f"The gateway publishes on {address}"
            + (" (retain: true)" if status else ""),
            "bindings": {"mqtt": {"qos": 1, "retain": status, "bindingVersion": "0.2.0"}},
            "messages": [
                {"$ref": f"#/channels/{cid}/messages/{_camel(t.name)}"} for t in types
            ],
        }
    schemas["SignedCommand"] = signed_command_schema()
    for name, model in COMMANDS.items():
        data = model.model_json_schema(ref_template=_REF)
        _collect(data, schemas)
        schemas[model.__name__] = data
        body = f"{model.__name__}Signed"
        schemas[body] = signed_body_schema(name, _REF.format(model=model.__name__))
        mid = f"{name}Command"
        messages[mid] = {
            "name": mid,
            "title": f"{name} command",
            "summary": (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
            "description": "A signed command envelope (SignedCommand); its 'signed' field "
            f"decodes to {body}, whose 'payload' is {model.__name__}.",
            "contentType": "application/json",
            "payload": {"$ref": "#/components/schemas/SignedCommand"},
            "x-signed-body": {"$ref": f"#/components/schemas/{body}"},
        }
        for scope, address, parameters in (
            ("store", "storegate/v1/{store}/commands/" + name, {"store": params["store"]}),
            ("central", f"{topics.CENTRAL}/{name}", None),
        ):
            cid = f"{'commands' if scope == 'store' else 'central'}{name[:1].upper()}{name[1:]}"
            channels[cid] = {
                "address": address,
                "description": (
                    "Central -> the gateways of one store (QoS 1)." if scope == "store"
                    else "Central -> the gateways of every store (QoS 1), signed with store "
                    "'*'.") + " Signed by central (Ed25519); a command that fails a check "
                "is never acted on: it is counted, logged and answered with "
                "storegate.gateway.command_rejected.v1.",
                **({"parameters": parameters} if parameters else {}),
                "messages": {mid: {"$ref": f"#/components/messages/{mid}"}},
            }
            operations[f"receive{cid[:1].upper()}{cid[1:]}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{cid}"},
                "summary": f"The gateway subscribes to {address}",
                "bindings": {"mqtt": {"qos": 1, "bindingVersion": "0.2.0"}},
                "messages": [{"$ref": f"#/channels/{cid}/messages/{mid}"}],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "storegate edge gateway",
            "version": CONTRACT_VERSION,
            "description": (
                "What a storegate gateway publishes to MQTT. Every message is a "
                "CloudEvents 1.0 structured-mode JSON object; 'time' is when the event "
                "happened; 'sequence' is monotonic per gateway and survives restarts. "
                "Delivery is at least once: consumers deduplicate on 'id'."
            ),
        },
        "defaultContentType": "application/cloudevents+json; charset=utf-8",
        "servers": {
            "store-broker": {
                "host": "localhost:1883",
                "protocol": "mqtt",
                "protocolVersion": "5.0",
                "description": "The store's broker (bridged to central; see deploy/).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items())), "messages": messages},
    }


def render() -> dict[str, str]:
    """Every generated file, relative to docs/, with its content."""
    files = {"asyncapi.yaml": yaml.dump(asyncapi())}
    for type_, schema in json_schemas().items():
        files[f"schemas/{type_}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return files


def write(docs: Path) -> list[Path]:
    written = []
    for rel, text in render().items():
        path = docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
