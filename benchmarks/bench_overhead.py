"""1. Per-extraction overhead at zero latency, one request at a time.

extractkit (one tier, ledger on, a file on disk) against instructor and against the raw openai
client + ``model_validate_json``, all on the same httpx transport and the same stub, interleaved
in rounds so that machine noise hits all three alike. Target: extractkit <= 1.15x instructor.

    python -m benchmarks.bench_overhead [--size tiny|full]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import instructor
import openai

from benchmarks._common import Invoice, args, document, report, stub
from extractkit import Extractor, ZeroShot
from extractkit.ledger import Ledger

SIZES = {"tiny": {"rounds": 2, "calls": 5}, "full": {"rounds": 7, "calls": 200}}
MODEL = "gpt-4o-mini"


# the baselines send exactly the messages extractkit sends (its default zero-shot prompt), so the
# three differ only in what each library does around the same HTTP exchange
_PROMPT = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, api_key="unused")])._bound["zero_shot"]


def messages(i: int) -> list[dict[str, str]]:
    return _PROMPT.messages(document(i))


async def raw(client: openai.AsyncOpenAI, n: int) -> float:
    tool = {"type": "function", "function": {"name": "Invoice", "parameters": Invoice.model_json_schema()}}
    t0 = time.perf_counter()
    for i in range(n):
        r = await client.chat.completions.create(
            model=MODEL, messages=messages(i), tools=[tool],  # type: ignore[arg-type,list-item]
            tool_choice={"type": "function", "function": {"name": "Invoice"}}, max_tokens=200,
        )  # fmt: skip
        Invoice.model_validate_json(r.choices[0].message.tool_calls[0].function.arguments)  # type: ignore[index,union-attr]
    return (time.perf_counter() - t0) / n


async def with_instructor(client: instructor.AsyncInstructor, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await client.chat.completions.create(model=MODEL, messages=messages(i), response_model=Invoice,  # type: ignore[arg-type]
                                             max_retries=0, max_tokens=200)  # fmt: skip
    return (time.perf_counter() - t0) / n


async def with_extractkit(ex: Extractor[Invoice], n: int, offset: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        r = await ex.aextract(document(offset + i))
        assert r.ok, r.error
    return (time.perf_counter() - t0) / n


async def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    with stub() as s, tempfile.TemporaryDirectory() as tmp:
        raw_client = openai.AsyncOpenAI(api_key="sk-bench", base_url=s.base_url, max_retries=0)
        inst_client = instructor.from_openai(openai.AsyncOpenAI(api_key="sk-bench", base_url=s.base_url,
                                                                max_retries=0))  # fmt: skip
        ledger = Ledger(Path(tmp) / "ledger.sqlite3")
        ex = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, base_url=s.base_url, api_key="sk-bench",
                                                transport="httpx", max_reasks=0)], ledger=ledger)  # fmt: skip
        # warm up every path (imports, connections, the ledger's first writes)
        await raw(raw_client, 3)
        await with_instructor(inst_client, 3)
        await with_extractkit(ex, 3, 10**6)
        results: dict[str, list[float]] = {"raw": [], "instructor": [], "extractkit": []}
        for r in range(size["rounds"]):
            results["raw"].append(await raw(raw_client, size["calls"]))
            results["instructor"].append(await with_instructor(inst_client, size["calls"]))
            results["extractkit"].append(await with_extractkit(ex, size["calls"], r * size["calls"]))
        await ex.aclose()
        ledger.close()
        await raw_client.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["extractkit"] / med["instructor"]
    rows = [
        {"measure": "ms per extraction: extractkit vs instructor", "value": med["extractkit"] * 1e3,
         "baseline": med["instructor"] * 1e3, "ratio": ratio, "target": "<= 1.15", "met": ratio <= 1.15},
        {"measure": "ms per extraction: instructor vs raw openai", "value": med["instructor"] * 1e3,
         "baseline": med["raw"] * 1e3, "ratio": med["instructor"] / med["raw"], "target": "(orientation: 1.7)"},
        {"measure": "ms per extraction: extractkit vs raw openai", "value": med["extractkit"] * 1e3,
         "baseline": med["raw"] * 1e3, "ratio": med["extractkit"] / med["raw"], "target": ""},
    ]  # fmt: skip
    report("overhead", ns, rows, {"per_round_s": results, "config": size})
    print(json.dumps({k: round(v * 1e3, 3) for k, v in med.items()}))


if __name__ == "__main__":
    asyncio.run(main())
