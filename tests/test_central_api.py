"""Central's retailer API against its own OpenAPI document (schemathesis, in process):
generated requests for every operation, with a valid token, get no 5xx (bad input is a
4xx with a clear error) and answers that conform to the document. And central's exit
codes: 2 for a storage that cannot work as given, 1 for one that fails at run time."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from storegate.adapters.central.storage import Database, Target
from storegate.app.central.api import build_app
from storegate.app.central.commands import Commands
from storegate.app.central.service import CentralService
from storegate.app.cli import main
from tests.support.central import CENTRAL

TOKEN = "retailer-token-for-schema-tests"
_DIR = Path(tempfile.mkdtemp(prefix="storegate-central-api-"))
DB = Database(Target.parse(str(_DIR / "central.db")))
SERVICE = CentralService(DB, Commands(DB, CENTRAL.key, CENTRAL.kid, lambda _t, _p: True))
APP = build_app(SERVICE, [TOKEN], status=lambda: {"ok": True})
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    # Valid-looking data is rightly refused at times (404 for an unknown customer or
    # order, 409 for a state change out of order), and unknown query parameters are
    # ignored by design: both "must accept / must reject" checks are off; no 5xx and
    # conforming answers stay checked.
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                           excluded_checks=[positive_data_acceptance,
                                            negative_data_rejection])


@pytest.mark.parametrize(("storage", "code", "says"), [
    ("mysql://u:secret@db/x", 2, "give a SQLite file path"),
    ("/nonexistent-storegate/dir/central.db", 2, "does not exist"),
    ("postgresql://u:secret@127.0.0.1:1/x", 1, "is the server up"),
])
def test_a_storage_that_cannot_work_exits_with_its_code_and_one_line(
        storage: str, code: int, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["central", "--storage", storage, "--http-port", "0"]) == code
    err = capsys.readouterr().err
    assert says in err and "secret" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_file_that_is_not_a_database_exits_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "central.db"
    bad.write_bytes(b"this is not a SQLite database, it is a text file " * 100)
    assert main(["central", "--storage", str(bad), "--http-port", "0"]) == 2
    assert "not a database" in capsys.readouterr().err
