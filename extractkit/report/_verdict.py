"""The verdict: is a tier worth running after the ones before it?

The question asked of a tier (the fine-tuned tier after few-shot, few-shot after zero-shot) is
economic. Of the ``n`` documents the chain saw, the tier *rescued* ``k`` (resolved documents the
earlier tiers failed; in ``eval``, answered correctly documents the earlier tiers did not). Each
rescue saves the cost of a failure ``F`` (a manual review, say $2.00); the tier costs ``c`` per
document on average (its spend over all ``n``, including what it spent failing). Running it pays
when the rescue rate ``p = k/n`` exceeds ``c / F``. A tier that rescues fewer than ``min_share`` of
documents is not worth its complexity whatever it costs, so the bar is
``threshold = max(c / F, min_share)``.

``p`` is uncertain, so the decision reads a 95 % Wilson interval, not the point estimate:

- keep  when the whole interval lies above the threshold;
- drop  when the whole interval lies below it;
- otherwise "not enough evidence yet", with how many documents at the rate seen so far would
  settle it. Below ``min_documents`` (30) the answer is always "not enough evidence yet": an
  interval from a handful of documents is right about sampling noise and silent about everything
  else that changes between documents.

With a one-off training cost ``T`` (a fine-tuned tier's alone: the other kinds train nothing), the
break-even volume is ``T / (p*F - c)`` documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from .._errors import ConfigError
from .._words import plural
from ._format import money, pct
from ._stats import documents_needed, wilson

KEEP, DROP, UNDECIDED, NO_DATA = "keep", "drop", "not_enough_evidence", "no_data"
FINE_TUNED = "fine_tuned"  # the one kind of tier a training cost applies to


@dataclass(frozen=True)
class Economics:
    """What a failure costs the team, a one-off training cost, and the smallest share worth having.
    A value out of range is a ConfigError (the CLI's options --failure-cost and the others)."""

    failure_cost: float = 2.00
    training_cost: float | None = None
    min_share: float = 0.01
    min_documents: int = 30

    def __post_init__(self) -> None:
        if self.failure_cost <= 0:
            raise ConfigError("failure_cost must be > 0 (the cost of one failed document, e.g. 2.00)")
        if self.training_cost is not None and self.training_cost < 0:
            raise ConfigError("training_cost must be >= 0")
        if not 0 <= self.min_share < 1:
            raise ConfigError("min_share must be in [0, 1)")
        if self.min_documents < 1:
            raise ConfigError("min_documents must be >= 1")


class Verdict(BaseModel):
    """The verdict on one tier after the ones before it: the decision, the sentence that says it and
    why, and the numbers behind it (None where there were no documents, or no price)."""

    # frozen; keys a caller added to the plain data (eval's counts) are ignored when it is read back
    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants")

    tier: str
    after: tuple[str, ...]
    decision: str
    sentence: str
    n: int
    rescued: int
    rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    threshold: float | None = None
    cost_per_document: float | None = None
    savings_per_document: float | None = None
    net_per_document: float | None = None
    documents_needed: int | None = None
    break_even_documents: float | None = None
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples), as in the report's JSON."""
        return self.model_dump(mode="json")


def marginal_verdict(
    tier: str,
    after: list[str],
    *,
    n: int,
    rescued: int,
    spend: float | None,
    economics: Economics,
    what: str = "it resolved {k} of {n_documents} that {before} did not",
    kind: str | None = None,
) -> Verdict:
    """Verdict on running ``tier`` after the tiers in ``after``.

    ``spend`` is what the tier cost over the ``n`` documents (None when a price was unknown; the
    verdict then judges the rescue rate alone and says so). ``what`` words the rescue, with
    ``{k}``, ``{n}``, ``{n_documents}`` ("1 document", "12 documents") and ``{before}`` filled in.
    ``kind`` is the tier's kind: only a ``fine_tuned`` tier has the economics' training cost.
    """
    before = " -> ".join(after) if after else "nothing"
    if n <= 0:
        return Verdict(tier=tier, after=tuple(after), decision=NO_DATA, n=0, rescued=0,
                       sentence=f"No documents reached a chain with {tier} yet.")  # fmt: skip
    F = economics.failure_cost
    rate = rescued / n
    lo, hi = wilson(rescued, n)
    reasons: list[str] = []
    if spend is None:
        cost = None
        reasons.append(f"{tier}'s price is unknown, so its cost is left out; set a price to include it")
        threshold = economics.min_share
    else:
        cost = spend / n
        threshold = max(cost / F, economics.min_share)
    savings = rate * F
    net = savings - (cost or 0.0)
    seen = what.format(k=rescued, n=n, n_documents=plural(n, "document"), before=before)
    seen += f" ({pct(rate)}, 95% CI {pct(lo)}-{pct(hi)})"
    gain = (
        f"{money(savings)} saved per document at {money(F)} per failure, against "
        f"{money(cost)} it costs per document"
        if cost is not None
        else ""
    )
    bar = (
        f"the {pct(threshold)} rescue rate it needs to pay for itself"
        if cost is not None and cost / F >= economics.min_share
        else f"the {pct(economics.min_share)} minimum share worth running a tier for"
    )
    needed: int | None = None
    if n < economics.min_documents:
        decision = UNDECIDED
        total = documents_needed(rescued, n, threshold)
        needed = max(economics.min_documents, total or 0) - n
        too_few = _too_few(n, total, economics.min_documents, bar)
        sentence = f"Not enough evidence yet on {tier}: {seen}; {too_few}"
        reasons.append(
            f"only {plural(n, 'document')} so far, fewer than the {economics.min_documents} every verdict "
            "requires (--min-documents): an interval from a handful of documents is right about sampling "
            "noise and silent about everything else that changes between documents"
        )
    elif lo > threshold:
        decision = KEEP
        sentence = f"Keep {tier}: {seen}" + (f"; {gain}." if gain else ".")
        reasons.append(f"the whole interval lies above {bar}")
    elif hi < threshold:
        decision = DROP
        sentence = f"Drop {tier}: {seen}, below {bar}" + (f"; {gain}." if gain else ".")
        reasons.append(f"the whole interval lies below {bar}")
    else:
        decision = UNDECIDED
        total = documents_needed(rescued, n, threshold)
        needed = None if total is None else total - n
        more = (
            f"about {plural(needed, 'more document', 'more documents')} at this rate would settle it"
            if needed is not None
            else "at this rate no realistic number of documents would settle it"
        )
        sentence = f"Not enough evidence yet on {tier}: {seen}, which straddles {bar}; {more}."
        reasons.append(f"the interval {pct(lo)}-{pct(hi)} contains {pct(threshold)}")
    break_even: float | None = None
    if economics.training_cost is not None and kind == FINE_TUNED:
        if net > 0:
            break_even = economics.training_cost / net
            reasons.append(
                f"a one-off training cost of {money(economics.training_cost)} is recovered after "
                f"about {plural(break_even, 'document')} at the rate seen"
            )
        else:
            reasons.append(
                f"it never recovers a training cost of {money(economics.training_cost)}: "
                "it saves less per document than it costs"
            )
    return Verdict(
        tier=tier, after=tuple(after), decision=decision, sentence=sentence, n=n, rescued=rescued, rate=rate,
        ci_low=lo, ci_high=hi, threshold=threshold, cost_per_document=cost, savings_per_document=savings,
        net_per_document=net, documents_needed=needed, break_even_documents=break_even,
        reasons=tuple(reasons),
    )  # fmt: skip


def _too_few(n: int, total: int | None, minimum: int, bar: str) -> str:
    """Why fewer than ``minimum`` documents decide nothing, and which of two numbers sets how many more:
    the minimum every verdict needs, or the total the evidence at this rate needs."""
    so_far = f"only {plural(n, 'document')} so far, below the minimum of {minimum} that any verdict needs"
    if total is None:
        return (f"{so_far} ({minimum - n} more); beyond it, at this rate no realistic number of documents "
                f"would settle it against {bar}.")  # fmt: skip
    if total <= minimum:
        return (f"{so_far}, so {minimum - n} more; at this rate the 95% interval would settle it against "
                f"{bar} within that minimum.")  # fmt: skip
    return (f"{so_far}, which alone would mean {minimum - n} more; but at this rate the 95% interval "
            f"would settle it against {bar} only after about {total} documents in all, so about "
            f"{total - n} more.")  # fmt: skip


def headline_sentence(
    verdicts: Sequence[Verdict | Mapping[str, Any]], kinds: Mapping[str, str | None]
) -> str | None:
    """The sentence a reader came for: the verdict on the fine-tuned tier (the last one if there
    are several), else on the last tier of the chain. Chosen by the tier's kind, not its name."""
    # (tier, sentence) of each: a verdict may be given as its plain data (eval keeps its verdicts as dicts)
    chosen = [(v["tier"], v["sentence"]) if isinstance(v, Mapping) else (v.tier, v.sentence)
              for v in verdicts]  # fmt: skip
    if not chosen:
        return None
    fine = [v for v in chosen if kinds.get(v[0]) == FINE_TUNED] or chosen[-1:]
    return str(fine[-1][1])
