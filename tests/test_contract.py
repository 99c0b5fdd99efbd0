"""The published contract is generated from the code and committed: never stale, valid
YAML/JSON Schema, and real events validate against it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from storegate.contract import asyncapi
from storegate.core import events as ev
from storegate.core.commands import COMMANDS
from tests.support.outbox import purchase, telemetry, visit

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_committed_contract_is_up_to_date() -> None:
    for rel, text in asyncapi.render().items():
        path = DOCS / rel
        assert path.exists(), f"{path} missing: run `storegate contract write docs`"
        assert path.read_text("utf-8") == text, (
            f"{path} is stale: run `storegate contract write docs` and commit it"
        )


def test_asyncapi_yaml_is_valid_yaml_of_the_generated_document() -> None:
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text("utf-8"))
    assert doc == json.loads(json.dumps(asyncapi.asyncapi()))
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert "storegate/v1/{store}/{gateway}/events/purchase" in addresses
    assert "storegate/v1/{store}/{gateway}/status" in addresses
    # every message referenced by a channel is defined, every type has a message
    names = {m["name"] for m in doc["components"]["messages"].values()}
    commands = {f"{name}Command" for name in COMMANDS}  # issue 11 adds campaigns, customers
    assert {"replayCommand", "identitiesCommand", "campaignsCommand"} <= commands
    assert names == set(ev.CATALOGUE) | commands
    assert doc["operations"]["receiveCommandsReplay"]["action"] == "receive"


@pytest.mark.parametrize("draft", [purchase(1, items=3), visit(2), telemetry(3)],
                         ids=lambda d: d.type.name)
def test_events_validate_against_their_schema(draft: ev.EventDraft) -> None:
    schema = asyncapi.json_schemas()[draft.type.name]
    jsonschema.Draft202012Validator.check_schema(schema)
    ce = json.loads(ev.encode(ev.envelope(draft, event_id="0190a3e4-7c4e-7000-8000-000000000001",
                                          source="storegate://s1/g1", sequence=7)))
    jsonschema.validate(ce, schema)
    broken = dict(ce, sequence="7")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(ce, type="storegate.other.v1"), schema)
