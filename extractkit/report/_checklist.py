"""Prompt versions compared, and the checklist answered before the verdict on fine-tuning.

Two steps of the report (``read_report``), each returning typed values (``_model``):

- ``versions_of``: per tier, every version of its prompt (the template's hash, ``instructions``
  included), of its examples (their hash as validated) and of its ``k`` / ``select``, each as the
  chain configs in scope recorded it (``runs.config_json``, ``BoundTier.describe()``): identity by
  content, never by path. Per version: first and last use, documents, success rate with its 95 %
  Wilson interval, cost per valid extraction, failed attempts by outcome; and for two versions
  sent the same documents, the paired comparison (only-a / only-b, exact McNemar), as eval's
  head-to-head does.
- ``checklist_of``: the questions to answer before training a model ("have you tried several
  prompt formulations, few-shot examples, retrieval, cleaned the input, and is the gap still
  significant?"), each answered yes / no / not enough evidence with the numbers behind it, and the
  conclusion said beside the (unchanged) keep / drop arithmetic of the fine-tuned tier's verdict.

The unit is the report's: a document is the latest final extraction of one document by one chain
config; a document sent to a tier under two configs of one version counts twice for that version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError
from .._results import Outcome
from .._words import plural
from ._format import low_confidence_line, money, pct, short_version
from ._model import (
    Checklist,
    ChecklistItem,
    Rescue,
    Sources,
    TierStats,
    Totals,
    Unresolved,
    Version,
    VersionComparison,
    Versions,
)
from ._stats import mcnemar_exact, two_proportion_z, wilson
from ._verdict import DROP, FINE_TUNED, KEEP, Economics, Verdict

YES, NO, UNKNOWN = "yes", "no", "not_enough_evidence"
PROMPT, EXAMPLES, K_SELECT = "prompt", "examples", "k_select"
DIMENSIONS = (PROMPT, EXAMPLES, K_SELECT)
MIN_FORMULATIONS = 5  # "have you tried several prompt formulations (at least five)?"
MIN_VERSION_DOCUMENTS = 30  # a version with fewer documents is not counted as tried
SIGNIFICANT = 0.05  # the p-value below which the best version is significantly better than the first
MAX_COMPARED = 12  # versions per tier and dimension whose pairs are compared (the most used ones)
# refused for length: by the chain (a tier's prompt did not fit) or by the loader (too big to read)
LENGTH_REFUSALS = (Outcome.CONTEXT_OVERFLOW.value, "text_too_large", "too_large")
UNKNOWN_VERSION = "(no config recorded)"


def check_options(target_success: float | None, min_version_documents: int) -> None:
    """ConfigError for a value out of range (the CLI's --target-success, --min-version-documents)."""
    if target_success is not None and not 0 < target_success <= 1:
        raise ConfigError("target_success must be in (0, 1], e.g. 0.98 (the share of documents wanted valid)")
    if min_version_documents < 1:
        raise ConfigError("min_version_documents must be >= 1")


def version_keys(described: Mapping[str, Any]) -> dict[str, str]:
    """A tier's versions as its chain config describes it (``BoundTier.describe()``): its prompt's
    hash always; the examples' hash and ``k`` / ``select`` for a tier with examples."""
    keys = {PROMPT: str(described.get("prompt_hash") or UNKNOWN_VERSION)}
    if described.get("examples_hash") is not None:
        keys[EXAMPLES] = str(described["examples_hash"])
    if described.get("k") is not None or described.get("select") is not None:
        keys[K_SELECT] = f"k={described.get('k')} select={described.get('select')}"
    return keys


def config_versions(
    chains: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[tuple[str, str], dict[str, str]]:
    """(config hash, tier name) -> that tier's versions in that config."""
    return {(h, t["name"]): version_keys(t) for h, ts in chains.items() for t in ts if "name" in t}


def tiers_with_several(chains: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The tiers some dimension of which has more than one version in scope: those whose documents
    are paired (``ledger.VERSION_PAIRS``)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for (_, tier), keys in config_versions(chains).items():
        for dim, v in keys.items():
            seen.setdefault((tier, dim), set()).add(v)
    return sorted({tier for (tier, _), vs in seen.items() if len(vs) > 1})


@dataclass
class _Sums:
    configs: set[str] = field(default_factory=set)
    documents: int = 0
    resolved: int = 0
    cost: float = 0.0
    unpriced: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    first: float = math.inf
    last: float = -math.inf


def versions_of(
    stats: Sequence[Mapping[str, Any]],
    pairs: Sequence[Mapping[str, Any]],
    chains: Mapping[str, Sequence[Mapping[str, Any]]],
    order: Sequence[str],
    min_documents: int,
) -> Versions:
    """Step 6: per tier and dimension, each version's numbers, the best of them, and the paired
    comparisons. ``stats``: per (config, tier, outcome) sums (``ledger.VERSION_STATS``); ``pairs``:
    per (tier, config pair) the documents both configs sent to the tier, by who resolved them
    (``ledger.VERSION_PAIRS``)."""
    keys = config_versions(chains)
    sums: dict[tuple[str, str, str], _Sums] = {}
    for r in stats:
        found = keys.get((r["config_hash"], r["tier"]), {PROMPT: UNKNOWN_VERSION})
        for dim, v in found.items():
            s = sums.setdefault((r["tier"], dim, v), _Sums())
            s.configs.add(r["config_hash"])
            s.documents += int(r["first"])
            n = int(r["n"])
            if r["outcome"] == Outcome.OK.value:
                s.resolved += n
            else:
                s.failures[r["outcome"]] = s.failures.get(r["outcome"], 0) + n
            s.cost += float(r["cost"] or 0.0)
            s.unpriced += n - int(r["priced"])
            if r["first_started"] is not None:
                s.first = min(s.first, r["first_started"])
                s.last = max(s.last, r["last_started"])
    rank = {t: i for i, t in enumerate(order)}
    ordered = sorted(
        sums.items(),
        key=lambda kv: (rank.get(kv[0][0], len(rank)), DIMENSIONS.index(kv[0][1]), kv[1].first, kv[0][2]),
    )
    best: dict[tuple[str, str], str] = {}
    groups: dict[tuple[str, str], list[tuple[str, _Sums]]] = {}
    for (tier, dim, v), s in ordered:
        groups.setdefault((tier, dim), []).append((v, s))
    for key, vs in groups.items():
        counted = [(v, s) for v, s in vs if s.documents >= min_documents]
        if len(counted) > 1:  # ties: the later version (the team's most recent try)
            best[key] = max(enumerate(counted), key=lambda x: (x[1][1].resolved / x[1][1].documents, x[0]))[
                1
            ][0]
    # the configs in scope whose chain has the version (the per-tier sums of a tier with one version
    # come under one of them)
    holders: dict[tuple[str, str, str], int] = {}
    for (_, tier), found in keys.items():
        for dim, v in found.items():
            holders[(tier, dim, v)] = holders.get((tier, dim, v), 0) + 1
    rows = []
    for (tier, dim, v), s in ordered:
        cost = None if s.unpriced else s.cost
        seen = math.isfinite(s.first)
        rows.append(
            Version(
                tier=tier,
                dimension=dim,
                version=v,
                configs=holders.get((tier, dim, v), len(s.configs)),
                first_used=s.first if seen else None,
                last_used=s.last if seen else None,
                documents=s.documents,
                resolved=s.resolved,
                success_rate=s.resolved / s.documents if s.documents else None,
                success_ci=wilson(s.resolved, s.documents) if s.documents else None,
                cost_usd=cost,
                cost_per_valid_usd=cost / s.resolved if cost is not None and s.resolved else None,
                failure_outcomes=dict(sorted(s.failures.items(), key=lambda kv: (-kv[1], kv[0]))),
                best=best.get((tier, dim)) == v,
            )
        )
    return Versions(rows=tuple(rows), comparisons=_compare(pairs, keys, groups), min_documents=min_documents)


def _compare(
    pairs: Sequence[Mapping[str, Any]],
    keys: Mapping[tuple[str, str], dict[str, str]],
    groups: Mapping[tuple[str, str], list[tuple[str, _Sums]]],
) -> tuple[VersionComparison, ...]:
    """The paired comparisons: config pairs mapped to the versions they ran, per dimension."""
    position = {(tier, dim, v): i for (tier, dim), vs in groups.items() for i, (v, _) in enumerate(vs)}
    compared = {
        (tier, dim): {v for v, _ in sorted(vs, key=lambda x: -x[1].documents)[:MAX_COMPARED]}
        for (tier, dim), vs in groups.items()
    }
    counts: dict[tuple[str, str, str, str], list[int]] = {}  # -> [documents, both, only_a, only_b]
    for r in pairs:
        ka, kb = keys.get((r["config_a"], r["tier"]), {}), keys.get((r["config_b"], r["tier"]), {})
        for dim in DIMENSIONS:
            va, vb = ka.get(dim), kb.get(dim)
            if va is None or vb is None or va == vb:
                continue
            if {va, vb} - compared.get((r["tier"], dim), set()):
                continue
            ok_a, ok_b = bool(r["ok_a"]), bool(r["ok_b"])
            if position[(r["tier"], dim, va)] > position[(r["tier"], dim, vb)]:  # a: first used earlier
                va, vb, ok_a, ok_b = vb, va, ok_b, ok_a
            c = counts.setdefault((r["tier"], dim, va, vb), [0, 0, 0, 0])
            n = int(r["n"])
            c[0] += n
            c[1] += n if ok_a and ok_b else 0
            c[2] += n if ok_a and not ok_b else 0
            c[3] += n if ok_b and not ok_a else 0
    out = []
    for (tier, dim, a, b), (n, both, only_a, only_b) in counts.items():
        out.append(
            VersionComparison(
                tier=tier,
                dimension=dim,
                a=a,
                b=b,
                documents=n,
                resolved_a=both + only_a,
                resolved_b=both + only_b,
                only_a=only_a,
                only_b=only_b,
                p_value=mcnemar_exact(only_a, only_b),
            )
        )
    group = {key: i for i, key in enumerate(groups)}  # chain order, then dimension
    out.sort(
        key=lambda c: (
            group[(c.tier, c.dimension)],
            position[(c.tier, c.dimension, c.a)],
            position[(c.tier, c.dimension, c.b)],
        )
    )
    return tuple(out)


def best_against_first(versions: Versions, tier: str, dim: str = PROMPT) -> dict[str, Any] | None:
    """The best counted version of a tier against the first counted one: the paired comparison when
    they shared documents (exact McNemar), else the two-proportion z test; None without a best."""
    counted = [
        v
        for v in versions.rows
        if v.tier == tier and v.dimension == dim and v.documents >= versions.min_documents
    ]
    best = next((v for v in counted if v.best), None)
    if best is None:
        return None
    first = counted[0]
    out: dict[str, Any] = {
        "first": first.version,
        "best": best.version,
        "first_rate": first.success_rate,
        "best_rate": best.success_rate,
    }
    if best.version == first.version:
        return {**out, "test": None, "p_value": None, "significant": False}
    pair = next(
        (
            c
            for c in versions.comparisons
            if c.tier == tier
            and c.dimension == dim
            and {c.a, c.b} == {first.version, best.version}
            and c.documents
        ),
        None,
    )
    if pair is not None:
        only_best, only_first = (
            (pair.only_b, pair.only_a) if pair.b == best.version else (pair.only_a, pair.only_b)
        )
        p = pair.p_value
        out.update(
            test="mcnemar", shared_documents=pair.documents, only_best=only_best, only_first=only_first
        )
    else:
        z = two_proportion_z(best.resolved, best.documents, first.resolved, first.documents)
        p = 1.0 if z is None else math.erfc(abs(z) / math.sqrt(2))
        out.update(test="two_proportion_z", z=z)
    better = (best.success_rate or 0) > (first.success_rate or 0)
    return {**out, "p_value": p, "significant": better and p < SIGNIFICANT}


def _prompts(tiers: Sequence[TierStats], versions: Versions) -> ChecklistItem:
    question = f"Prompt formulations tried for the cheap tiers (at least {MIN_FORMULATIONS})?"
    n = versions.min_documents
    per: dict[str, dict[str, Any]] = {}
    for t in tiers:
        vs = [v for v in versions.rows if v.tier == t.tier and v.dimension == PROMPT]
        per[t.tier] = {"versions": len(vs), "counted": sum(v.documents >= n for v in vs)}
    numbers: dict[str, Any] = {"min_formulations": MIN_FORMULATIONS, "min_version_documents": n, "tiers": per}
    if not per:
        return ChecklistItem(
            key="prompts",
            question=question,
            answer=UNKNOWN,
            numbers=numbers,
            detail="no cheap tier ran in scope",
        )
    top = max(per, key=lambda k: (per[k]["counted"], per[k]["versions"]))
    counted, seen = per[top]["counted"], per[top]["versions"]
    answer = YES if counted >= MIN_FORMULATIONS else UNKNOWN if seen >= MIN_FORMULATIONS else NO
    detail = "; ".join(
        f"{k}: {plural(v['counted'], 'version')} with at least {n} documents (of {v['versions']} seen)"
        for k, v in per.items()
    )
    compared = best_against_first(versions, top)
    numbers["best_against_first"] = compared
    numbers["tier"] = top
    numbers["counted"] = counted
    if compared is not None and compared["test"] is not None:
        how = (
            f"{compared['only_best']} documents only the best resolved, {compared['only_first']} only the "
            f"first, exact McNemar p = {compared['p_value']:.2g}"
            if compared["test"] == "mcnemar"
            else f"no shared documents, two-proportion z p = {compared['p_value']:.2g}"
        )
        verdict = "significantly better" if compared["significant"] else "not significantly better"
        best, first = short_version(compared["best"]), short_version(compared["first"])
        detail += (
            f"; best {top} prompt {best} ({pct(compared['best_rate'])}) against the first "
            f"{first} ({pct(compared['first_rate'])}): {verdict} ({how})"
        )
    elif compared is not None:
        detail += f"; the first {top} prompt is still the best"
    if answer == UNKNOWN:
        detail += f" (versions with fewer than {n} documents do not count: --min-version-documents)"
    return ChecklistItem(key="prompts", question=question, answer=answer, detail=detail, numbers=numbers)


def _examples(versions: Versions, cheap: set[str]) -> tuple[ChecklistItem, ChecklistItem]:
    files = [v for v in versions.rows if v.dimension == EXAMPLES and v.tier in cheap and v.documents]
    settings = [v for v in versions.rows if v.dimension == K_SELECT and v.tier in cheap and v.documents]
    question = "Few-shot examples added?"
    numbers = {
        "examples_files": len(files),
        "documents": sum(v.documents for v in files),
        "settings": {v.version: v.documents for v in settings},
    }
    if files:
        ks = sorted({v.version.split()[0].removeprefix("k=") for v in settings})
        detail = (
            f"{plural(len(files), 'examples file')} (by content) in "
            f"{', '.join(sorted({v.tier for v in files}))}, k = {', '.join(ks) or '?'} per prompt, "
            f"sent with {plural(sum(v.documents for v in files), 'document')}"
        )
        examples = ChecklistItem(
            key="examples", question=question, answer=YES, detail=detail, numbers=numbers
        )
    else:
        examples = ChecklistItem(
            key="examples",
            question=question,
            answer=NO,
            numbers=numbers,
            detail="no cheap tier with examples (a few-shot tier) was sent any document",
        )
    question = 'Examples chosen by similarity to the document (retrieval, select="similar")?'
    similar = sum(v.documents for v in settings if v.version.endswith("select=similar"))
    fixed = sum(v.documents for v in settings if not v.version.endswith("select=similar"))
    numbers = {"similar_documents": similar, "fixed_documents": fixed}
    if similar:
        detail = f"BM25 retrieval for {plural(similar, 'document')}" + (
            f", fixed examples for {fixed}" if fixed else ""
        )
        retrieval = ChecklistItem(
            key="retrieval", question=question, answer=YES, detail=detail, numbers=numbers
        )
    else:
        detail = (
            f'examples fixed (select="first") for all {plural(fixed, "document")}'
            if fixed
            else "no few-shot tier ran, so no examples were retrieved"
        )
        retrieval = ChecklistItem(
            key="retrieval", question=question, answer=NO, detail=detail, numbers=numbers
        )
    return examples, retrieval


OCRD = "OCR'd document"
LOW_NAMED = 3  # low-confidence OCR'd documents named in the checklist (the report's sources list more)


def _ocr(sources: Sources | None) -> str:
    """What the OCR'd documents in scope say about the input: none, all confident, or which have
    pages under the confidence threshold (the report's ``sources``: one model for every renderer)."""
    if sources is None or not sources.ocr_documents:
        return "no OCR'd documents in scope"
    n, low = sources.ocr_documents, sources.low_confidence_documents
    mean = f", mean confidence {sources.mean_confidence:.2f}" if sources.mean_confidence is not None else ""
    read = f"{plural(n, OCRD)} ({plural(sources.ocr_pages, 'page')}{mean})"
    if not low:
        return f"{read}, none with a page under the OCR confidence threshold"
    # the report's own line per document (under the threshold, or little text read: _pages.low_pages)
    named = [low_confidence_line(d) for d in sources.low_confidence[:LOW_NAMED]]
    more = f"; and {low - len(named)} more" if low > len(named) else ""
    return (f"low-confidence OCR: {low} of {read} {'has' if low == 1 else 'have'} pages under the OCR "
            f"confidence threshold ({'; '.join(named)}{more})")  # fmt: skip


def _input(
    totals: Totals,
    unresolved: Unresolved,
    document_errors: Mapping[str, int],
    economics: Economics,
    sources: Sources | None = None,
) -> ChecklistItem:
    question = "Input pipeline clean (documents read, none refused for length, no low-confidence OCR)?"
    unreadable = {k: v for k, v in document_errors.items() if k not in LENGTH_REFUSALS}
    length = {k: v for k, v in document_errors.items() if k in LENGTH_REFUSALS}
    overflow = unresolved.by_outcome.get(Outcome.CONTEXT_OVERFLOW.value, 0)
    if overflow:
        length[Outcome.CONTEXT_OVERFLOW.value] = overflow
    everything = totals.documents + sum(document_errors.values())
    lost_unreadable, lost_length = sum(unreadable.values()), sum(length.values())
    share = (lost_unreadable + lost_length) / everything if everything else None
    numbers = {
        "documents": everything,
        "unreadable": unreadable,
        "refused_for_length": length,
        "lost": lost_unreadable + lost_length,
        "share_lost": share,
        "threshold": economics.min_share,
        # documents in scope read (wholly or partly) by OCR, and those with a page under the
        # confidence threshold recorded with them (the report's ``sources``)
        "low_confidence_ocr": sources.low_confidence_documents if sources is not None else 0,
        "ocr_documents": sources.ocr_documents if sources is not None else 0,
    }
    ocr = _ocr(sources)
    if not everything:
        return ChecklistItem(
            key="input", question=question, answer=UNKNOWN, numbers=numbers, detail="no documents in scope"
        )

    def part(d: Mapping[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"

    detail = (
        f"of {plural(everything, 'document')}: unreadable {lost_unreadable} "
        f"({pct(lost_unreadable / everything)}; {part(unreadable)}), refused for length {lost_length} "
        f"({pct(lost_length / everything)}; {part(length)}); {ocr}"
    )
    few_lost = share is not None and share < economics.min_share
    # a document OCR'd with low confidence was read, but maybe wrongly: the pipeline is not clean
    answer = YES if few_lost and not numbers["low_confidence_ocr"] else NO
    detail += (
        f"; {pct(share)} lost, "
        + ("under" if few_lost else "at or over")
        + f" the {pct(economics.min_share)} worth fixing (--min-share)"
    )
    return ChecklistItem(key="input", question=question, answer=answer, detail=detail, numbers=numbers)


def _gap(
    tiers: Sequence[TierStats], cheap: set[str], totals: Totals, target: float | None, economics: Economics
) -> ChecklistItem:
    question = "Gap between the cheap tiers and the target still significant?"
    n = totals.documents
    resolved = sum(t.resolved for t in tiers if t.tier in cheap)
    rate = resolved / n if n else None
    lo, hi = wilson(resolved, n) if n else (None, None)
    numbers = {
        "documents": n,
        "resolved_by_cheap_tiers": resolved,
        "success_rate": rate,
        "ci_low": lo,
        "ci_high": hi,
        "unresolved_share": None if rate is None else 1 - rate,
        "target_success": target,
        "gap": None if rate is None or target is None else target - rate,
    }
    if rate is None:
        return ChecklistItem(
            key="gap", question=question, answer=UNKNOWN, numbers=numbers, detail="no documents in scope"
        )
    seen = (
        f"the cheap tiers ({', '.join(t.tier for t in tiers if t.tier in cheap) or 'none'}) resolve "
        f"{resolved} of {plural(n, 'document')} ({pct(rate)}, 95% CI {pct(lo)}-{pct(hi)}), leaving "
        f"{pct(1 - rate)} unresolved"
    )
    if target is None:
        return ChecklistItem(
            key="gap",
            question=question,
            answer=UNKNOWN,
            numbers=numbers,
            detail=f"{seen}; set --target-success (e.g. 0.98) to compare it with a target",
        )
    if n < economics.min_documents:
        answer, why = UNKNOWN, f"fewer than the {economics.min_documents} documents any verdict needs"
    elif hi is not None and hi < target:
        answer, why = YES, f"the whole interval lies below the {pct(target)} target"
    elif lo is not None and lo >= target:
        answer, why = NO, f"the whole interval reaches the {pct(target)} target: fine-tuning is not needed"
    else:
        answer, why = UNKNOWN, f"the interval straddles the {pct(target)} target"
    return ChecklistItem(
        key="gap", question=question, answer=answer, detail=f"{seen}; {why}", numbers=numbers
    )


def checklist_of(
    tiers: Sequence[TierStats],
    totals: Totals,
    unresolved: Unresolved,
    document_errors: Mapping[str, int],
    rescue: Sequence[Rescue],
    verdicts: Sequence[Verdict],
    versions: Versions,
    economics: Economics,
    target_success: float | None,
    sources: Sources | None = None,
) -> Checklist:
    """Step 7: the checklist, each question answered from the ledger, and its conclusion.
    ``sources``: the report's (where the text came from; OCR confidence), None without pages."""
    cheap_tiers = [t for t in tiers if t.kind != FINE_TUNED]
    cheap = {t.tier for t in cheap_tiers}
    examples, retrieval = _examples(versions, cheap)
    items = (
        _prompts(cheap_tiers, versions),
        examples,
        retrieval,
        _input(totals, unresolved, document_errors, economics, sources),
        _gap(tiers, cheap, totals, target_success, economics),
    )
    complete = all(i.answer == YES for i in items)
    return Checklist(
        target_success=target_success,
        min_version_documents=versions.min_documents,
        items=items,
        complete=complete,
        conclusion=_conclusion(items, tiers, rescue, verdicts),
    )


def _fine_tuned(
    tiers: Sequence[TierStats], rescue: Sequence[Rescue], verdicts: Sequence[Verdict]
) -> str | None:
    """The fine-tuned tier's verdict in a few words ("... rescues 12% at $0.004 each: keep it")."""
    kinds = {t.tier: t.kind for t in tiers}
    pairs = [(x, v) for x, v in zip(rescue, verdicts, strict=False) if kinds.get(x.tier) == FINE_TUNED]
    if not pairs:
        return None
    x, v = pairs[-1]
    each = f" at {money(x.cost_per_rescued_usd)} each" if x.cost_per_rescued_usd is not None else ""
    word = {KEEP: "keep it", DROP: "drop it"}.get(v.decision, "not enough evidence yet on it")
    return f"the fine-tuned tier ({x.tier}) rescues {pct(v.rate)}{each}: {word}"


def _conclusion(
    items: Sequence[ChecklistItem],
    tiers: Sequence[TierStats],
    rescue: Sequence[Rescue],
    verdicts: Sequence[Verdict],
) -> str:
    if not tiers:
        return "No documents in scope: nothing to check."
    by = {i.key: i for i in items}
    ft = _fine_tuned(tiers, rescue, verdicts)
    if by["gap"].answer == NO:
        return "The cheap tiers already reach the target: fine-tuning is not needed" + (
            f" (the arithmetic alone says: {ft})." if ft else "."
        )
    missing = []
    p = by["prompts"]
    if p.answer != YES:
        counted = p.numbers.get("counted", 0)
        missing.append(
            f"only {plural(counted, 'prompt version')} with at least {p.numbers['min_version_documents']} "
            f"documents {'was' if counted == 1 else 'were'} tried (of the {MIN_FORMULATIONS} wanted)"
        )
    if by["examples"].answer != YES:
        missing.append("no few-shot examples were used")
    elif by["retrieval"].answer != YES:
        missing.append("the examples are fixed, not retrieved by similarity")
    i = by["input"]
    if i.answer == NO:
        share, low = i.numbers["share_lost"], i.numbers.get("low_confidence_ocr") or 0
        if share is not None and share >= i.numbers["threshold"]:
            missing.append(f"the input pipeline loses {pct(share)} of documents")
        if low:
            missing.append(f"{plural(low, OCRD)} {'has' if low == 1 else 'have'} "
                           "pages under the OCR confidence threshold")  # fmt: skip
    g = by["gap"]
    if g.answer == UNKNOWN:
        missing.append(
            "the gap to the target is not established"
            + (" (set --target-success)" if g.numbers["target_success"] is None else "")
        )
    if missing:
        return (
            "The checklist is not complete: "
            + "; ".join(missing)
            + ": fix those before training"
            + (f" (the arithmetic alone says: {ft})." if ft else ".")
        )
    return "The cheap things were tried; " + (ft + "." if ft else "no fine-tuned tier ran in scope.")
