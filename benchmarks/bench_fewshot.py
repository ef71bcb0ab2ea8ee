"""7. Few-shot selection from 10,000 examples: the most similar k=3 (BM25, bm25s) for each document.
Per-document time through extractkit's selector, against bm25s called directly on the same index
in the same run (the selector's own overhead). Target: <= 2 ms per document.

    python -m benchmarks.bench_fewshot [--size tiny|full]
"""

from __future__ import annotations

import random
import statistics
import time

import bm25s

from benchmarks._common import args, report
from extractkit._examples import Example, ExampleSelector

SIZES = {"tiny": {"examples": 300, "documents": 50}, "full": {"examples": 10_000, "documents": 1_000}}
WORDS = ["invoice", "total", "amount", "due", "tax", "vat", "net", "gross", "order", "customer", "supplier", "shipping", "freight", "discount", "hosting", "licence", "service", "consulting", "hardware", "software", "cloud", "storage", "transfer", "support", "maintenance", "subscription", "monthly", "annual", "quarterly", "rental", "lease", "energy", "electricity", "water", "gas", "fuel", "travel", "hotel", "catering"]  # fmt: skip
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Tyrell", "Cyberdyne")


def text(rng: random.Random, i: int) -> str:
    lines = [f"From: {rng.choice(COMPANIES)} {rng.choice(WORDS).title()} Ltd", f"Invoice {i}"]
    for _ in range(rng.randint(5, 25)):
        lines.append(" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) + f" {rng.randint(1, 999)}.{rng.randint(0, 99):02d}")
    lines.append(f"Total: {rng.randint(10, 9999)}.{rng.randint(0, 99):02d}")
    return "\n".join(lines)


def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    rng = random.Random(7)
    examples = [Example(input=text(rng, i), output={"i": i}) for i in range(size["examples"])]
    docs = [text(rng, 10**6 + i) for i in range(size["documents"])]
    t0 = time.perf_counter()
    selector = ExampleSelector(examples, k=3, strategy="similar")
    build_s = time.perf_counter() - t0
    retriever = selector._retriever
    for d in docs[:5]:  # warm both paths
        selector.select(d)
    ours, direct = [], []
    for d in docs:  # interleaved, so noise hits both alike
        t0 = time.perf_counter()
        chosen = selector.select(d)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        q = bm25s.tokenize([d], stopwords="en", return_ids=False, show_progress=False)
        retriever.retrieve(q, k=3, show_progress=False)
        direct.append(time.perf_counter() - t0)
        assert len(chosen) == 3
    ms, base = statistics.median(ours) * 1e3, statistics.median(direct) * 1e3
    p95 = sorted(ours)[int(0.95 * len(ours)) - 1] * 1e3
    rows = [
        {"measure": f"ms per document, k=3 of {size['examples']:,} examples (baseline: bm25s directly)",
         "value": ms, "baseline": base, "ratio": ms / base, "target": "<= 2 ms", "met": ms <= 2.0},
        {"measure": "  p95 ms per document", "value": p95, "baseline": None, "ratio": None, "target": ""},
        {"measure": "  index build, s (once per extractor)", "value": build_s, "baseline": None, "ratio": None,
         "target": ""},
    ]  # fmt: skip
    report("fewshot", ns, rows)


if __name__ == "__main__":
    main()
