"""The [stitching] section and each lane's checkout_zone: a zone that is not a presence
zone, or confidences out of their order, name the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from storegate.config import load
from storegate.core.personal.stitching import StitchingSettings
from storegate.errors import ConfigError

STORE = """
store_id = "s"
gateway_id = "g"
[[presence.zones]]
id = "aisle"
scanners = ["sa"]
[[presence.zones]]
id = "till"
scanners = ["st"]
"""
LANE = """
[[pos.lanes]]
id = "lane-1"
{extra}
[[pos.lanes.devices]]
role = "fiscal"
dialect = "atol-v3"
port = "/dev/serial/by-id/fiscal"
"""


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return f


def test_defaults_and_a_lane_with_its_checkout_zone(tmp_path: Path) -> None:
    c = load(write(tmp_path, STORE + LANE.format(extra='checkout_zone = "till"')), environ={})
    assert c.lane_checkout_zones() == {"lane-1": "till"}
    assert c.stitching.settings() == StitchingSettings()  # the documented defaults
    assert c.stitching.settings().lookback_s == 30.0


def test_settings_follow_the_file(tmp_path: Path) -> None:
    text = STORE + LANE.format(extra="") + """
[stitching]
presence_rule = "off"
lookback_s = 12.5
[stitching.confidence]
loyalty = 0.9
token = 0.9
presence = 0.5
"""
    s = load(write(tmp_path, text), environ={}).stitching.settings()
    assert (s.presence_rule, s.lookback_s, s.loyalty_confidence, s.token_confidence,
            s.presence_confidence) == ("off", 12.5, 0.9, 0.9, 0.5)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (STORE + LANE.format(extra='checkout_zone = "tills"'),
         r"c\.toml: pos: .*lane 'lane-1': checkout_zone 'tills' is not a presence zone "
         r"\(\[\[presence\.zones\]\] ids: \['aisle', 'till'\]\)"),
        ('store_id = "s"\ngateway_id = "g"\n' + LANE.format(extra='checkout_zone = "till"'),
         r"pos: .*checkout_zone 'till' is not a presence zone .*none configured"),
        (STORE + "[stitching]\npresence_rule = \"nearest\"\n",
         r"stitching\.presence_rule: Input should be 'sole_customer_in_checkout_zone' or "
         r"'off'"),
        (STORE + "[stitching]\nlookback_s = -1\n", r"stitching\.lookback_s: .*greater than"),
        (STORE + "[stitching.confidence]\npresence = 0.99\n",
         r"stitching\.confidence: .*keep loyalty >= token >= presence"),
        (STORE + "[stitching.confidence]\ntoken = 1.5\n",
         r"stitching\.confidence\.token: .*less than or equal to 1"),
    ],
)
def test_broken_stitching_config_names_key_and_problem(tmp_path: Path, text: str,
                                                       expect: str) -> None:
    with pytest.raises(ConfigError, match=expect) as info:
        load(write(tmp_path, text), environ={})
    assert info.value.source == str(tmp_path / "c.toml")


def test_settings_reject_what_the_config_would() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        StitchingSettings(presence_confidence=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        StitchingSettings(lookback_s=-1)
