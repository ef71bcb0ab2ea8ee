"""2. Batch throughput at concurrency 64: `extractkit extract`'s runner over a folder of documents
(ledger on), against the ideal concurrency / latency and against a plain aiohttp loop sending the
same requests to the same stub in the same run. Targets: >= 0.95x of ideal at 1 s latency,
>= 0.85x at 200 ms with 2,000 documents.

    python -m benchmarks.bench_throughput [--size tiny|full]
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks._common import Invoice, args, document, report, stub
from extractkit import Extractor, ZeroShot
from extractkit.batch import BatchRunner
from extractkit.ledger import Ledger

SIZES = {
    "tiny": {"concurrency": 8, "cases": [(0.2, 40)]},
    "full": {"concurrency": 64, "cases": [(1.0, 2000), (0.2, 2000)]},
}
TARGETS = {1.0: 0.95, 0.2: 0.85}
MODEL = "gpt-4o-mini"


def make_docs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i:06d}.txt").write_text(document(i))


async def with_extractkit(base_url: str, folder: Path, ledger_path: Path, concurrency: int) -> tuple[float, int]:
    ex = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, base_url=base_url, api_key="sk-bench", max_reasks=0,
                                            transport="aiohttp")])  # fmt: skip
    with Ledger(ledger_path) as ledger:
        runner = BatchRunner(ex, ledger, concurrency=concurrency, freeze_gc=True)  # as `extractkit extract` runs it
        t0 = time.perf_counter()
        summary = await runner.run([folder])
        elapsed = time.perf_counter() - t0
        await ex.aclose()  # made here, so closed here (the runner leaves it open)
    assert summary.ok == summary.documents, summary.to_dict()
    return elapsed, summary.documents


async def with_aiohttp(base_url: str, n: int, concurrency: int) -> float:
    prompt = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, api_key="unused")])._bound["zero_shot"]
    tool = {"type": "function", "function": {"name": "Invoice", "parameters": Invoice.model_json_schema()}}
    todo = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers={"Authorization": "Bearer sk-bench"}) as session:

        async def worker() -> None:
            for i in todo:
                body = {"model": MODEL, "messages": prompt.messages(document(i)), "tools": [tool], "max_tokens": 200,
                        "tool_choice": {"type": "function", "function": {"name": "Invoice"}}}  # fmt: skip
                async with session.post(f"{base_url}/chat/completions", json=body) as r:
                    data = await r.json()
                args_ = data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                Invoice.model_validate_json(args_)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0


async def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    conc = size["concurrency"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for latency, n in size["cases"]:
            folder = Path(tmp) / f"docs-{n}"
            if not folder.exists():
                make_docs(folder, n)
            ideal = conc / latency
            with stub(latency=latency) as s:
                base = await with_aiohttp(s.base_url, n, conc)
                s.reset()
                elapsed, docs = await with_extractkit(s.base_url, folder, Path(tmp) / f"l-{latency}.sqlite3", conc)
                served = s.stats()["ok"]
            rate, base_rate = docs / elapsed, n / base
            target = TARGETS.get(latency)
            rows.append({"measure": f"docs/s at {latency * 1000:.0f} ms latency, {n} docs, {conc} in flight "
                                    "(baseline: ideal concurrency/latency)",
                         "value": rate, "baseline": ideal, "ratio": rate / ideal,
                         "target": f">= {target}" if target else "", "met": rate / ideal >= target if target else None,
                         "requests_served": served})  # fmt: skip
            rows.append({"measure": f"  plain aiohttp, same requests (vs ideal), {latency * 1000:.0f} ms",
                         "value": base_rate, "baseline": ideal, "ratio": base_rate / ideal, "target": "(orientation)"})  # fmt: skip
            rows.append({"measure": f"  extractkit vs plain aiohttp, {latency * 1000:.0f} ms",
                         "value": rate, "baseline": base_rate, "ratio": rate / base_rate, "target": ""})  # fmt: skip
    report("throughput", ns, rows, {"config": {"concurrency": conc, "cases": size["cases"]}})
    print(json.dumps({r["measure"]: round(r["ratio"], 3) for r in rows}))


if __name__ == "__main__":
    asyncio.run(main())
