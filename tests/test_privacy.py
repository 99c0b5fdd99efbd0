"""The privacy settings: central's pseudonym key from the environment, never echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storegate.config import parse
from storegate.core.pseudonyms import pseudonym
from storegate.errors import ConfigError
from tests.support.gateway_proc import storegate

BASE = 'store_id = "s"\ngateway_id = "g"\n'
KEY = "5f" * 32


def test_pseudonym_key_from_the_environment_and_raw_only_by_opt_in() -> None:
    cfg = parse(BASE, source="t", base=Path(), environ={
        "STOREGATE_PRIVACY__PSEUDONYM_KEY": KEY})
    personal = cfg.privacy.personal_data()
    assert personal.loyalty("LOY1") == pseudonym(bytes.fromhex(KEY), "loyalty", "LOY1")
    assert personal.operator("Иванова") == pseudonym(bytes.fromhex(KEY), "operator",
                                                      "Иванова")
    default = parse(BASE, source="t", base=Path(), environ={}).privacy.personal_data()
    assert default.loyalty("LOY1") is None and default.operator("Иванова") is None
    raw = parse(BASE + "[privacy]\nraw_loyalty_ids = true\n", source="t", base=Path(),
                environ={}).privacy.personal_data()
    assert raw.loyalty("LOY1") == "LOY1" and raw.operator("Иванова") is None


@pytest.mark.parametrize(("value", "problem"), [
    ("not a key at all", "not hex or base64"), ("ab" * 8 + "cd", "too short")])
def test_a_bad_key_is_one_clear_error_that_never_repeats_it(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(BASE, source="t", base=Path(),
              environ={"STOREGATE_PRIVACY__PSEUDONYM_KEY": value})
    msg = str(err.value)
    assert "STOREGATE_PRIVACY__PSEUDONYM_KEY" in msg and problem in msg
    assert value not in msg


@pytest.mark.e2e
def test_config_show_masks_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(BASE + f'[privacy]\npseudonym_key = "{KEY}"\n')
    r = storegate("config", "show", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout
    assert json.loads(r.stdout)["privacy"]["pseudonym_key"] == "**********"
