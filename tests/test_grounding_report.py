"""The report names the fields whose values were not found in the document, per tier."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Annotated

import httpx
import pytest
from pydantic import BaseModel
from rich.console import Console

from extractkit import Extractor, FewShot, Grounded, ZeroShot
from extractkit.ledger import Ledger
from extractkit.report import Scope, build_report, print_report, report_html

from .fakes import BASE_URL, completion


class Invoice(BaseModel):
    issuer: Annotated[str, Grounded()]
    date: Annotated[dt.date, Grounded()]


def doc(i: int) -> str:
    return f"Firm {i} GmbH\nRechnung vom 07.05.2014\n"


def responder(request: httpx.Request) -> httpx.Response:
    """zero-shot invents the date (and on every third document the issuer too); few-shot copies."""
    body = json.loads(request.content)
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    i = int(user.rsplit("Firm ", 1)[1].split(" ", 1)[0])
    answer = {"issuer": f"Firm {i} GmbH", "date": "2014-05-07"}
    if body["model"] == "zero-m":
        answer["date"] = "2014-05-08"
        if i % 3 == 0:
            answer["issuer"] = "Globex Ltd"
    name = body.get("tools", [{}])[0].get("function", {}).get("name", "Invoice")
    return httpx.Response(200, json=completion(answer, name=name, model=body["model"]))


@pytest.mark.parametrize("scope", [Scope(), Scope(schema="Invoice")], ids=["current", "filtered"])
def test_the_report_shows_the_most_often_ungrounded_fields_per_tier(mock_api, scope, ledger_target):
    mock_api.post("/chat/completions").mock(side_effect=responder)
    ledger = Ledger(ledger_target)
    ex = Extractor(Invoice, ledger=ledger, tiers=[
        ZeroShot(model="zero-m", base_url=BASE_URL, max_reasks=1),
        FewShot(model="few-m", base_url=BASE_URL, max_reasks=0,
                examples=[{"input": "ACME AG\n1. Mai 2020", "output": {"issuer": "ACME AG", "date": "2020-05-01"}}]),
    ])  # fmt: skip
    for i in range(6):
        result = ex.extract(doc(i))
        assert result.ok and result.tier == "few_shot"
    # the failed zero-shot attempts say what they rejected
    assert "date 2014-05-08 not found in the document" in result.attempts[0].errors[0]["msg"]
    report = build_report(ledger, scope)
    tiers = {t["tier"]: t for t in report["tiers"]}
    # 6 documents x 2 attempts each reject the date; documents 0 and 3 the issuer too
    assert tiers["zero_shot"]["ungrounded_fields"] == [
        {"field": "date", "n": 12},
        {"field": "issuer", "n": 4},
    ]
    assert tiers["few_shot"]["ungrounded_fields"] == []
    note = "values not found in the document (ungrounded), most often in: zero_shot: date (12), issuer (4)"
    assert note in report["notes"]
    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    assert note in out.getvalue()
    assert "zero_shot: date (12), issuer (4)" in report_html(report)
    assert any(q["name"] in ("ungrounded_fields", "rollup_fields") for q in report["queries"])
