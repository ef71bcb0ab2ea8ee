"""Issue 18, section 4 (cost): batch requests are priced at the provider's batch price (half the
live price of a model in the price table; overridable like any price), a tier says how its requests
go (``via``), and neither the way nor the batch price is part of the chain's identity. No network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from extractkit import Extractor, FineTuned, Price, ZeroShot
from extractkit._config import build_tiers, parse_config
from extractkit._errors import ConfigError
from extractkit._pricing import BATCH_DISCOUNT, FT_PRICES, PRICES, batch_price, cost
from extractkit._results import Usage
from extractkit._steps import Answer

from .conftest import Invoice
from .fakes import BASE_URL, completion

DOC = "ACME Tools Ltd\nInvoice 7\nDate: 2024-03-15\nTotal due: 1,249.50 EUR\n"
GOOD = {"issuer": "ACME Tools Ltd", "total": 1249.5, "date": "2024-03-15"}


def test_the_batch_discount_is_half():
    assert BATCH_DISCOUNT == 0.5


@pytest.mark.parametrize("model", sorted(PRICES))
def test_batch_price_is_half_the_table_price(model):
    live = PRICES[model]
    got = batch_price(model)
    assert got is not None
    assert got.input == pytest.approx(live.input / 2)
    assert got.output == pytest.approx(live.output / 2)
    if live.cached_input is None:
        assert got.cached_input is None
    else:
        assert got.cached_input == pytest.approx(live.cached_input / 2)


def test_batch_price_of_known_models_by_hand():
    assert batch_price("gpt-4o-mini") == Price(0.075, 0.30, 0.0375, training=3.00)
    # a dated model name has its base model's price
    assert batch_price("gpt-4o-2024-08-06") == Price(1.25, 5.00, 0.625, training=25.00)


@pytest.mark.parametrize("base", sorted(FT_PRICES))
def test_batch_price_of_a_fine_tuned_model_is_half_its_fine_tuned_price(base):
    model = f"ft:{base}-2024-07-18:acme::abc123"
    got, live = batch_price(model), FT_PRICES[base]
    assert got is not None
    assert (got.input, got.output) == (pytest.approx(live.input / 2), pytest.approx(live.output / 2))
    assert batch_price(f"ft:{base}:acme::x") == got


def test_an_unknown_model_has_no_batch_price():
    assert batch_price("acme-gateway-model-7b") is None
    assert batch_price("ft:acme-7b:org::x") is None


def test_batch_price_overrides():
    own = Price(0.01, 0.02)
    # a batch override wins, by exact name, base name, or fine-tuned base
    assert batch_price("gpt-4o-mini", {"batch:gpt-4o-mini": own}) == own
    assert batch_price("gpt-4o-mini-2024-07-18", {"batch:gpt-4o-mini": own}) == own
    assert batch_price("ft:gpt-4o-mini:acme::x", {"batch:ft:gpt-4o-mini": own}) == own
    assert batch_price("ft:gpt-4o-mini:acme::x", {"batch:ft:gpt-4o-mini:acme::x": own}) == own
    # a fine-tuned model does not take its base model's batch override
    assert batch_price("ft:gpt-4o-mini:acme::x", {"batch:gpt-4o-mini": own}) == Price(0.15, 0.60, 0.075)
    # a live override only: its batch price is half of it; an unknown model with a live override too
    assert batch_price("gpt-4o-mini", {"gpt-4o-mini": Price(1.0, 2.0)}) == Price(0.5, 1.0)
    assert batch_price("acme-7b", {"acme-7b": Price(1.0, 2.0, 0.5)}) == Price(0.5, 1.0, 0.25)


def _batch_attempt_cost(ex: Extractor[Any], name: str, usage: tuple[int, int, int]) -> tuple[Any, Any]:
    steps = ex.steps(name)
    state = steps.start(DOC)
    body = completion(GOOD, usage=usage)
    answer = Answer(response=ChatCompletion.model_validate(body), started_at=1.0, latency_s=0.5, via="batch")
    attempt = steps.interpret(state, answer, DOC).attempt
    return attempt.cost_usd, attempt.live_cost_usd


def test_batch_attempts_of_the_chain_are_priced_at_the_batch_price():
    tiers = [
        ZeroShot(model="gpt-4o-mini", base_url=BASE_URL),
        FineTuned(model="ft:gpt-4o-mini:acme::x", base_url=BASE_URL, name="ft"),
        ZeroShot(model="acme-7b", base_url=BASE_URL, name="priced", price=Price(1.0, 4.0)),
        ZeroShot(model="acme-7b", base_url=BASE_URL, name="own", price=Price(1.0, 4.0),
                 batch_price=Price(0.2, 0.8)),  # fmt: skip
        ZeroShot(model="acme-7b", base_url=BASE_URL, name="unknown"),
        ZeroShot(model="gpt-4.1-mini", base_url=BASE_URL, name="overridden"),
    ]
    ex = Extractor(Invoice, tiers=tiers, prices={"batch:gpt-4.1-mini": Price(0.1, 0.1)})
    usage = (1_000_000, 1_000_000, 0)  # 1M in, 1M out: the cost is input + output rates
    assert _batch_attempt_cost(ex, "zero_shot", usage) == (pytest.approx(0.375), pytest.approx(0.75))
    assert _batch_attempt_cost(ex, "ft", usage) == (pytest.approx(0.75), pytest.approx(1.5))
    # a tier's own price at the discount, unless it sets batch_price
    assert _batch_attempt_cost(ex, "priced", usage) == (pytest.approx(2.5), pytest.approx(5.0))
    assert _batch_attempt_cost(ex, "own", usage) == (pytest.approx(1.0), pytest.approx(5.0))
    # unknown: unknown (never guessed)
    assert _batch_attempt_cost(ex, "unknown", usage) == (None, None)
    assert _batch_attempt_cost(ex, "overridden", usage) == (pytest.approx(0.2), pytest.approx(2.0))
    # cached input at half the cached rate
    assert cost(Usage(prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=1_000_000),
                ex.steps("zero_shot").batch_price) == pytest.approx(0.0375)  # fmt: skip


# -- the config --------------------------------------------------------------------------------


def _config(**tier: Any) -> dict[str, Any]:
    return {"schema": "tests.conftest:Invoice",
            "tiers": [{"kind": "zero_shot", "model": "gpt-4o-mini", "base_url": BASE_URL, **tier}]}  # fmt: skip


def _tiers(tmp_path: Path, **tier: Any) -> list[Any]:
    return build_tiers(parse_config(_config(**tier), root=tmp_path))


def test_config_via_and_batch_price(tmp_path):
    [tier] = _tiers(tmp_path, via="batch", batch_price={"input": 0.05, "output": 0.2, "cached_input": 0.01})
    assert tier.via == "batch"
    assert tier.batch_price == Price(0.05, 0.2, 0.01)
    [tier] = _tiers(tmp_path, via="live")
    assert (tier.via, tier.batch_price) == ("live", None)
    [tier] = _tiers(tmp_path)
    assert tier.via is None


def test_config_poll_s(tmp_path):
    assert parse_config(_config(), root=tmp_path).batch.poll_s == 30
    assert parse_config({**_config(), "batch": {"poll_s": 5}}, root=tmp_path).batch.poll_s == 5
    with pytest.raises(ConfigError, match="poll_s"):
        parse_config({**_config(), "batch": {"poll_s": -1}}, root=tmp_path)


@pytest.mark.parametrize(
    ("tier", "words"),
    [
        ({"via": "bulk"}, "via"),
        ({"batch_price": {"input": 0.1}}, "batch_price"),
        ({"batch_price": {"input": -1, "output": 1}}, "batch_price"),
        ({"base_url": "local", "via": "batch"}, "no Batch API"),
    ],
)
def test_config_refuses(tmp_path, tier, words):
    with pytest.raises(ConfigError, match=words):
        _tiers(tmp_path, **tier)


def test_a_local_tier_sent_by_batch_is_refused_in_the_library():
    with pytest.raises(ConfigError, match='no Batch API: set via = "live"'):
        ZeroShot(model="local-model", base_url="local", via="batch")
    with pytest.raises(ConfigError, match="via must be"):
        ZeroShot(model="gpt-4o-mini", via="bulk")
    assert ZeroShot(model="local-model", base_url="local", via="live").via == "live"


def test_via_and_batch_price_are_not_part_of_the_chain_identity():
    def ex(**kw: Any) -> Extractor[Any]:
        return Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, **kw)])

    plain = ex()
    for kw in ({"via": "batch"}, {"via": "live"}, {"batch_price": Price(0.01, 0.02)}):
        other = ex(**kw)
        assert other.config_hash == plain.config_hash, kw
        assert other.tier_hashes == plain.tier_hashes, kw


def test_switching_the_way_does_not_re_extract(tmp_path, mock_api):
    """Documents extracted with the tier live are final for the same tier set to batch: a wave run
    finds them in the ledger (same chain) and sends nothing, no batch file, no request."""
    import asyncio

    import httpx

    from extractkit.batch import BatchRunner, WaveRunner
    from extractkit.ledger import Ledger

    route = mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion(GOOD, usage=(100, 10, 0)))
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(DOC)
    (docs / "b.txt").write_text(DOC.replace("7", "8"))

    def tier(**kw: Any) -> ZeroShot:
        return ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, **kw)

    async def go(runner: Any) -> Any:
        try:
            return await runner.run([docs])
        finally:
            await runner.extractor.aclose()

    with Ledger(tmp_path / "l.sqlite3") as ledger:
        live = Extractor(Invoice, tiers=[tier(via="live")])
        first = asyncio.run(go(BatchRunner(live, ledger)))
        assert (first.documents, first.ok) == (2, 2)
        batch = Extractor(Invoice, tiers=[tier(via="batch", batch_price=Price(0.01, 0.01))])
        assert batch.config_hash == live.config_hash
        second = asyncio.run(go(WaveRunner(batch, ledger, poll_s=0)))
        assert (second.resumed, second.attempts) == (2, 0)
        assert ledger.wave_summary() == []
    assert route.call_count == 2
    assert [c.request.url.path for c in mock_api.calls] == ["/v1/chat/completions"] * 2
