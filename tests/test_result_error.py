"""`Result.error` names each rejected field with the value it rejected (cut short, redacted)."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from pydantic import BaseModel

from extractkit import Attempt, Extractor, Grounded, Outcome, Result, ZeroShot
from extractkit._redact import REDACTED, register
from extractkit.ledger import Ledger

from .fakes import BASE_URL, completion


class Line(BaseModel):
    name: Annotated[str, Grounded()]


class Bill(BaseModel):
    issuer: Annotated[str, Grounded()]
    total: float
    lines: list[Line] = []


DOC = "Globex GmbH\nRechnung\nWidget 12.50\nTotal 12.50\n"


def extract(mock_api: Any, answer: dict[str, Any]) -> Result[Bill]:
    mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion(answer, name="Bill"))
    )
    ex = Extractor(Bill, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)],
                   ledger=Ledger(":memory:"), raise_on_failure=False)  # fmt: skip
    result = ex.extract(DOC)
    assert not result.ok
    return result


@pytest.mark.parametrize(("answer", "error"), [
    ({"issuer": "ACME Corp", "total": 12.5},
     "zero_shot: ungrounded: issuer: 'ACME Corp' not found in the document"),
    # a type error names the value it could not read, not only the error type ("total float_parsing")
    ({"issuer": "Globex GmbH", "total": "twelve"},
     "zero_shot: schema_invalid: total: Input should be a valid number, unable to parse string as a number "
     "(got 'twelve')"),
    # a nested value is named by its whole path, not by its last name alone ("name 'Gadget' ...")
    ({"issuer": "Globex GmbH", "total": 12.5, "lines": [{"name": "Widget"}, {"name": "Gadget"}]},
     "zero_shot: ungrounded: lines.1.name: 'Gadget' not found in the document"),
    ({"total": 12.5}, "zero_shot: schema_invalid: issuer: missing"),
])  # fmt: skip
def test_the_error_names_the_field_and_the_rejected_value(mock_api, answer, error):
    assert extract(mock_api, answer).error == error


def test_a_long_rejected_value_is_cut_short(mock_api):
    result = extract(mock_api, {"issuer": "ACME " * 60, "total": 12.5})
    assert result.error is not None
    assert result.error.startswith("zero_shot: ungrounded: issuer: 'ACME ACME")
    assert result.error.endswith("... not found in the document")
    assert len(result.error) < 140


def test_a_secret_in_the_rejected_value_stays_out(mock_api):
    register("hunter2-correct-horse-battery")
    answer = {"issuer": "key hunter2-correct-horse-battery and sk-proj-abcdefghijklmnop", "total": "x"}
    result = extract(mock_api, answer)
    assert result.error is not None
    assert "hunter2" not in result.error and "sk-proj" not in result.error
    assert REDACTED in result.error and "issuer:" in result.error and "(got 'x')" in result.error


def test_built_from_attempts_alone_the_error_is_redacted_and_bounded():
    """A Result built by hand (not through the recording path) is still redacted."""
    errors = [{"type": "float_parsing", "loc": ["total"], "msg": "Input should be a valid number",
               "input": "'sk-abcdefghijklmnopqrstuvwxyz " + "9" * 200 + "'"}]  # fmt: skip
    attempt = Attempt(tier="t", model="m", number=1, outcome=Outcome.SCHEMA_INVALID, errors=errors)
    error = Result(value=None, tier=None, attempts=[attempt], latency_s=0.0).error
    assert error is not None and "sk-abc" not in error and REDACTED in error
    assert error.startswith("t: schema_invalid: total: Input should be a valid number (got '")
    assert len(error) < 150
