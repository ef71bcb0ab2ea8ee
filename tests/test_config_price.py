"""Issue 14, section 3: a TOML tier sets ``price``, ``extra_body`` and ``headers`` (values from the
file or from the environment), as a library tier does. Everything against respx: no network."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import httpx
import pytest
import respx
from rich.console import Console

from extractkit import Extractor, Price, ZeroShot
from extractkit._config import build_tiers, parse_config
from extractkit._errors import ConfigError
from extractkit.ledger import Ledger
from extractkit.report import build_report, print_report

from .conftest import Invoice
from .fakes import BASE_URL, completion

DOC = "From: ACME Tools Ltd\nTotal: 1,249.50\n"
ANSWER = {"issuer": "ACME Tools Ltd", "total": 1249.5}
MODEL = "acme-gateway-model-7b"  # not in the price table
SECRET = "gw-secret-value-1234567890"


def _config(tmp_path: Path, **tier: object) -> dict:
    return {
        "schema": "tests.conftest:Invoice",
        "tiers": [{"kind": "zero_shot", "model": MODEL, "base_url": BASE_URL, **tier}],
    }


def _tiers(tmp_path: Path, **tier: object) -> list:
    return build_tiers(parse_config(_config(tmp_path, **tier), root=tmp_path))


def _extract(tiers: list, ledger: Ledger) -> None:
    result = Extractor(Invoice, tiers=tiers, ledger=ledger).extract(DOC)
    assert result.ok, result.error


def _answer(mock_api: respx.MockRouter) -> respx.Route:
    return mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion(ANSWER, usage=(1_000_000, 100_000, 0)))
    )


def test_a_toml_price_gives_the_report_a_cost(tmp_path, mock_api):
    _answer(mock_api)
    [tier] = _tiers(tmp_path, price={"input": 0.15, "output": 0.6, "cached_input": 0.075})
    assert tier.price == Price(0.15, 0.6, 0.075)
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        _extract([tier], ledger)
        report = build_report(ledger)
    [row] = report["tiers"]
    assert row["unpriced_attempts"] == 0
    assert row["cost_usd"] == pytest.approx(0.15 + 0.06)  # 1M prompt, 100k completion tokens
    out = io.StringIO()
    print_report(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "$0.21" in text or "0.2100" in text, text
    assert "set `price` on the tier" not in text
    assert "cost unknown" not in text


def test_without_a_price_the_same_model_costs_unknown(tmp_path, mock_api):
    _answer(mock_api)
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        _extract(_tiers(tmp_path), ledger)
        [row] = build_report(ledger)["tiers"]
    assert row["cost_usd"] is None and row["unpriced_attempts"] == 1


@pytest.mark.parametrize(
    "price, expect",
    [
        ({"input": 0.15}, "tiers.0.price"),
        ("0.15", "tiers.0.price"),
        ({"input": 0.15, "output": 0.6, "cache": 0.1}, "tiers.0.price"),
        ({"input": -1, "output": 0.6}, "tiers.0.price"),
    ],
)
def test_a_wrong_price_shape_is_a_config_error_naming_the_key(tmp_path, price, expect):
    with pytest.raises(ConfigError) as err:
        parse_config(_config(tmp_path, price=price), root=tmp_path)
    assert expect in str(err.value)
    assert "USD per 1M tokens" in str(err.value)


def test_toml_extra_body_reaches_the_request_body(tmp_path, mock_api):
    route = _answer(mock_api)
    tiers = _tiers(tmp_path, extra_body={"top_k": 20, "chat_template_kwargs": {"thinking": False}})
    with Ledger(":memory:") as ledger:
        _extract(tiers, ledger)
    body = json.loads(route.calls.last.request.content)
    assert body["top_k"] == 20
    assert body["chat_template_kwargs"] == {"thinking": False}
    assert tiers[0].describe()["extra_body"] == {"top_k": 20, "chat_template_kwargs": {"thinking": False}}


def test_toml_headers_reach_the_request_and_never_the_ledger(tmp_path, mock_api, monkeypatch):
    monkeypatch.setenv("GATEWAY_TOKEN", SECRET)
    route = _answer(mock_api)
    tiers = _tiers(
        tmp_path, headers={"X-Team": "billing-team"}, headers_env={"X-Gateway-Key": "GATEWAY_TOKEN"}
    )
    assert SECRET not in repr(tiers[0])
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as ledger:
        _extract(tiers, ledger)
    request = route.calls.last.request
    assert request.headers["X-Team"] == "billing-team"
    assert request.headers["X-Gateway-Key"] == SECRET
    # not in any table, not in the file (WAL checkpointed on close)
    con = sqlite3.connect(path)
    try:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            for row in con.execute(f'SELECT * FROM "{table}"').fetchall():
                assert SECRET not in repr(row), table
    finally:
        con.close()
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f


def test_headers_are_not_part_of_the_identity(tmp_path):
    [plain] = _tiers(tmp_path)
    [with_headers] = _tiers(tmp_path, headers={"X-Team": "billing-team"})
    assert plain.describe() == with_headers.describe()
    [other_body] = _tiers(tmp_path, extra_body={"top_k": 20})
    assert plain.describe() != other_body.describe()


def test_a_header_from_an_unset_variable_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"tiers\.0\.headers_env\.X-Gateway-Key.*GATEWAY_TOKEN"):
        _tiers(tmp_path, headers_env={"X-Gateway-Key": "GATEWAY_TOKEN"})


def test_a_header_value_must_be_a_string(tmp_path):
    with pytest.raises(ConfigError, match=r"tiers\.0\.headers\.X-Team: Input should be a valid string"):
        parse_config(_config(tmp_path, headers={"X-Team": 3}), root=tmp_path)
    with pytest.raises(ConfigError, match="headers must map names to string values"):
        ZeroShot(model=MODEL, base_url=BASE_URL, headers={"X-Team": 3})  # type: ignore[dict-item]
