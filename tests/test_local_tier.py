"""What a local tier is, decided in one place (``extractkit.local``) and asked by everyone: the
tiers (mode, price, key, context window, endpoint identity), eval's and the report's note. An
explicit mode on a local tier is honoured, in the library and from a config file, and sent."""

from __future__ import annotations

import json

import httpx
import pytest

import extractkit.local
from extractkit import Extractor, FewShot, FineTuned, Price, ZeroShot
from extractkit._config import build_tiers, load_config
from extractkit._tiers import endpoint_identity, is_loopback
from extractkit.evaluate import GoldItem, build_eval, evaluate
from extractkit.ledger import Ledger

from .conftest import Invoice
from .fakes import BASE_URL, completion

DOC = "From: Firm 1 Ltd\nTotal: 1.50\n"
GOOD = {"issuer": "Firm 1 Ltd", "total": 1.5}
EXAMPLES = [{"input": "From: X Ltd\nTotal: 1.00", "output": {"issuer": "X Ltd", "total": 1.0}}]


def make(cls, **kw):
    if cls is FewShot:
        kw.setdefault("examples", EXAMPLES)
    return cls(**kw)


@pytest.mark.parametrize(
    ("base_url", "local"),
    [("local", True), (None, False), ("http://127.0.0.1:8012/v1", False), ("https://api.openai.com/v1", False),
     ("LOCAL", False), ("local/", False)],
)  # fmt: skip
def test_is_local_names_the_bundled_model_only(base_url, local):
    """A server on this machine is loopback (no key needed) but not the bundled model."""
    from extractkit.local import is_local

    assert is_local(base_url) is local


@pytest.mark.parametrize(
    ("described", "local"),
    [
        ({"name": "zero", "endpoint": "local", "model": "smollm"}, True),  # the endpoint decides
        ({"name": "zero", "endpoint": "http://127.0.0.1:8012/v1", "model": "local"}, False),
        ({"name": "zero", "model": "local"}, True),  # a run recorded before endpoints were kept
        ({"name": "zero", "model": "gpt-4o-mini"}, False),
    ],
)
def test_ran_locally_reads_a_recorded_tier(described, local):
    from extractkit.local import ran_locally

    assert ran_locally(described) is local


def test_every_tier_setting_asks_the_one_place(monkeypatch):
    """Change what a local tier is in extractkit.local alone: every local default follows (the
    tiers compare against nothing themselves)."""
    monkeypatch.setattr(extractkit.local, "is_local", lambda base_url: base_url == "bundled")
    monkeypatch.setattr(extractkit.local, "DEFAULT_MODE", "tools")
    monkeypatch.setattr(extractkit.local, "PRICE", Price(0.01, 0.02))
    monkeypatch.setattr(extractkit.local, "API_KEY", "any-key")
    monkeypatch.setattr(extractkit.local, "N_CTX", 1234)
    tier = ZeroShot(model="m", base_url="bundled")  # not an http(s) URL, yet not a ConfigError
    assert tier.is_local and tier.resolved_mode.value == "tools" and tier.price == Price(0.01, 0.02)
    assert tier.resolve_api_key() == "any-key" and tier.resolved_context_window() == 1234
    assert endpoint_identity("bundled") == "bundled" and is_loopback("bundled")
    assert not ZeroShot(model="m", base_url="http://127.0.0.1:8012/v1").is_local


def test_local_defaults_without_a_mode():
    for cls in (ZeroShot, FewShot, FineTuned):
        tier = make(cls, model="local", base_url="local")
        assert tier.resolved_mode.value == "json_schema"
        assert tier.price == Price(0.0, 0.0) and tier.resolved_context_window() == extractkit.local.N_CTX


@pytest.mark.parametrize("cls", [ZeroShot, FewShot, FineTuned])
@pytest.mark.parametrize("mode", ["tools", "json_schema", "json"])
def test_an_explicit_mode_on_a_local_tier_is_honoured(cls, mode):
    """llama.cpp's server handles all three (README, "The local model"): the tier keeps it."""
    assert make(cls, model="local", base_url="local", mode=mode).resolved_mode.value == mode


def test_an_explicit_mode_on_a_local_tier_is_honoured_from_a_config_file(tmp_path):
    (tmp_path / "extractkit.toml").write_text(
        'schema = "m:M"\n[[tiers]]\nkind = "zero_shot"\nmodel = "local"\nbase_url = "local"\nmode = "tools"\n'
        '[[tiers]]\nkind = "fine_tuned"\nmodel = "local"\nbase_url = "local"\nmode = "json"\n'
        '[[tiers]]\nkind = "zero_shot"\nname = "plain"\nmodel = "local"\nbase_url = "local"\n'
    )
    tiers = build_tiers(load_config(tmp_path / "extractkit.toml"))
    assert [t.resolved_mode.value for t in tiers] == ["tools", "json", "json_schema"]


def _bodies(route) -> list[dict]:
    return [json.loads(c.request.content) for c in route.calls]


@pytest.mark.parametrize(
    ("mode", "answer", "sent"),
    [
        ("tools", completion(GOOD), "tools"),
        ("json", completion(content=json.dumps(GOOD)), "json_object"),
        (None, completion(content=json.dumps(GOOD)), "json_schema"),
    ],
)
def test_a_local_tier_sends_the_mode_it_was_given(mock_api, monkeypatch, mode, answer, sent):
    monkeypatch.setenv("EXTRACTKIT_LOCAL_URL", BASE_URL)  # a local server already running
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=answer))
    result = Extractor(Invoice, tiers=[ZeroShot(model="local", base_url="local", mode=mode)]).extract(DOC)
    assert result.ok and result.attempts[0].cost_usd == 0.0
    [body] = _bodies(route)
    if sent == "tools":
        assert body["tools"][0]["function"]["name"] and body["tool_choice"]["type"] == "function"
        assert "response_format" not in body
    else:
        assert body["response_format"]["type"] == sent and "tools" not in body


def _eval_notes(tmp_path, tier) -> list[str]:
    gold = [GoldItem("1", {"issuer": "Firm 1 Ltd", "total": "1.50"}, text=DOC)]
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        s = evaluate(Extractor(Invoice, tiers=[tier]), gold, ledger)
        return build_eval(ledger, s.run_id)["notes"]


def test_eval_flags_a_tier_on_the_bundled_model_whatever_its_model_is_called(mock_api, monkeypatch, tmp_path):
    monkeypatch.setenv("EXTRACTKIT_LOCAL_URL", BASE_URL)
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(GOOD)))
    notes = _eval_notes(tmp_path, ZeroShot(name="small", model="smollm2", base_url="local", mode="tools"))
    assert any(n.startswith("small ran on the bundled local model (SmolLM2-135M)") for n in notes)


def test_eval_does_not_flag_a_hosted_model_named_local(mock_api, tmp_path):
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(GOOD)))
    notes = _eval_notes(tmp_path, ZeroShot(name="hosted", model="local", base_url=BASE_URL))
    assert not any("bundled local model" in n for n in notes)


def test_the_note_says_what_the_local_model_proves():
    from extractkit.local import accuracy_note

    note = accuracy_note(["zero_shot", "few_shot"])
    assert note.startswith("zero_shot, few_shot ran on the bundled local model (SmolLM2-135M)")
    assert "prove the pipeline" in note and "accuracy" in note
