"""Price table (USD per 1M tokens) and cost(). An unknown model costs None, never 0.

Batch prices: the provider's Batch API runs the same requests at half the price
(``BATCH_DISCOUNT``): ``batch_price(model, overrides)`` is an override under ``"batch:<model>"``
(``"batch:ft:<base>"`` for any model fine-tuned from ``<base>``, ``"batch:<base>"`` for a dated
name), else the live price (``lookup_price``: overrides, then the tables) at the discount; an
unknown model has no batch price (None, never guessed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ._results import Usage


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens. ``cached_input`` None: cached tokens cost as much as others."""

    input: float
    output: float
    cached_input: float | None = None
    training: float | None = None  # USD per 1M training tokens (fine-tuning), where offered


# Inference prices of base models (public list prices, USD per 1M tokens).
PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60, 0.075, training=3.00),
    "gpt-4o": Price(2.50, 10.00, 1.25, training=25.00),
    "gpt-4.1": Price(2.00, 8.00, 0.50, training=25.00),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10, training=5.00),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025, training=1.50),
    "gpt-3.5-turbo": Price(0.50, 1.50, None, training=8.00),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
}

# Inference prices of models fine-tuned from a base model ("ft:BASE:org:suffix:id").
# Fine-tuned gpt-4o-mini costs twice the base model per token.
FT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.30, 1.20, 0.15),
    "gpt-4o": Price(3.75, 15.00, 1.875),
    "gpt-4.1": Price(3.00, 12.00, 0.75),
    "gpt-4.1-mini": Price(0.80, 3.20, 0.20),
    "gpt-4.1-nano": Price(0.20, 0.80, 0.05),
    "gpt-3.5-turbo": Price(3.00, 6.00, None),
}

_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def base_model(model: str) -> str:
    """'ft:gpt-4o-mini-2024-07-18:acme::abc' -> 'gpt-4o-mini'; 'gpt-4o-2024-08-06' -> 'gpt-4o'."""
    name = model.split(":")[1] if model.startswith("ft:") and ":" in model[3:] else model
    return _DATE_SUFFIX.sub("", name)


def lookup_price(model: str, overrides: Mapping[str, Price] | None = None) -> Price | None:
    if overrides and model in overrides:
        return overrides[model]
    base = base_model(model)
    if model.startswith("ft:"):
        if overrides and f"ft:{base}" in overrides:
            return overrides[f"ft:{base}"]
        return FT_PRICES.get(base)
    if overrides and base in overrides:
        return overrides[base]
    return PRICES.get(model) or PRICES.get(base)


BATCH_DISCOUNT = 0.5  # the Batch API's price as a share of the live price (OpenAI: 50 %)
BATCH_PREFIX = "batch:"  # an override key for a model's batch price: "batch:gpt-4o-mini"


def discounted(price: Price, factor: float = BATCH_DISCOUNT) -> Price:
    """``price`` with its inference rates (input, output, cached input) times ``factor``; the
    training rate (fine-tuning jobs, not requests) is left as it is."""
    return replace(
        price,
        input=price.input * factor,
        output=price.output * factor,
        cached_input=None if price.cached_input is None else price.cached_input * factor,
    )


def batch_price(model: str, overrides: Mapping[str, Price] | None = None) -> Price | None:
    """The price of ``model``'s requests sent through the provider's Batch API: an override under
    ``"batch:<model>"`` (then ``"batch:ft:<base>"`` for a fine-tuned model, ``"batch:<base>"`` for
    a dated one), else the live price (``lookup_price``, overrides included) times
    ``BATCH_DISCOUNT``; None when the model's price is unknown (never guessed)."""
    if overrides:
        base = base_model(model)
        keys = [model, f"ft:{base}"] if model.startswith("ft:") else [model, base]
        for key in keys:
            if BATCH_PREFIX + key in overrides:
                return overrides[BATCH_PREFIX + key]
    live = lookup_price(model, overrides)
    return discounted(live) if live is not None else None


def cost(usage: Usage, price: Price | None) -> float | None:
    """USD for one call's usage; None when the price is unknown."""
    if price is None:
        return None
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    total = (
        (usage.prompt_tokens - cached) * price.input
        + cached * cached_rate
        + usage.completion_tokens * price.output
    ) / 1_000_000
    return round(total, 10)
