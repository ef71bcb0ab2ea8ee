"""3. Rate-limit saturation: the stub enforces a tokens/minute limit (counting a request as
ceil(characters / 4) + max_tokens, as OpenAI does, with 1 s of burst). extractkit's batch runner
with ``--tpm`` set to the limit, against a bulk script that sends at full concurrency and
retries each 429 after its Retry-After — both in the same run. Targets: achieved tokens/minute
>= 0.95x the limit, and < 1 % of requests answered 429.

    python -m benchmarks.bench_ratelimit [--size tiny|full]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks._common import Invoice, args, document, report, stub
from benchmarks.stub_server import Stub
from extractkit import Extractor, ZeroShot
from extractkit.batch import BatchRunner, RateLimiter
from extractkit.ledger import Ledger

SIZES = {"tiny": {"tpm": 120_000, "seconds": 3}, "full": {"tpm": 120_000, "seconds": 60}}
MODEL = "gpt-4o-mini"
PADDING = 20  # lines of filler per document: a prompt of a few hundred tokens


def achieved(stats: dict, elapsed: float) -> float:
    return stats["tokens_accepted"] / elapsed * 60


async def with_extractkit(base_url: str, folder: Path, ledger_path: Path, tpm: float) -> float:
    ex = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, base_url=base_url, api_key="sk-bench", max_reasks=0,
                                            transport="aiohttp")], limiter=RateLimiter(tpm=tpm))  # fmt: skip
    with Ledger(ledger_path) as ledger:
        t0 = time.perf_counter()
        summary = await BatchRunner(ex, ledger, concurrency=64, freeze_gc=True).run([folder])
        elapsed = time.perf_counter() - t0
        await ex.aclose()  # made here, so closed here (the runner leaves it open)
    assert summary.ok == summary.documents, summary.to_dict()
    return elapsed


async def burst_and_retry(base_url: str, n: int) -> float:
    """The usual bulk script: 64 in flight, sleep Retry-After on a 429, try again."""
    prompt = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, api_key="unused")])._bound["zero_shot"]
    tool = {"type": "function", "function": {"name": "Invoice", "parameters": Invoice.model_json_schema()}}
    todo = iter(range(n))
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer sk-bench"}) as session:

        async def worker() -> None:
            for i in todo:
                body = {"model": MODEL, "messages": prompt.messages(document(i, PADDING)), "tools": [tool],
                        "max_tokens": 256}  # fmt: skip
                while True:
                    async with session.post(f"{base_url}/chat/completions", json=body) as r:
                        if r.status == 429:
                            await asyncio.sleep(float(r.headers.get("retry-after-ms", 1000)) / 1000)
                            continue
                        await r.read()
                        break

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        return time.perf_counter() - t0


async def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    tpm = size["tpm"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        with stub(latency=0.2, tpm=tpm, burst_s=1) as s:
            # size the batch so it lasts about `seconds` at the limit
            probe = Extractor(Invoice, tiers=[ZeroShot(model=MODEL, api_key="unused")])._bound["zero_shot"]
            body = {"messages": probe.messages(document(0, PADDING)), "max_tokens": probe.max_tokens}
            per_request = Stub.tokens(body) + 300  # + the tool definition
            n = max(10, int(tpm / 60 * size["seconds"] / per_request))
            for i in range(n):
                (folder / f"doc{i:06d}.txt").write_text(document(i, PADDING))
            s.reset()
            elapsed = await with_extractkit(s.base_url, folder, Path(tmp) / "l.sqlite3", tpm)
            ek = s.stats()
            s.reset()
            base_elapsed = await burst_and_retry(s.base_url, n)
            base = s.stats()
    ek_rate, base_rate = achieved(ek, elapsed), achieved(base, base_elapsed)
    ek_429 = ek["rate_limited"] / max(1, ek["requests"])
    base_429 = base["rate_limited"] / max(1, base["requests"])
    rows = [
        {"measure": f"tokens/minute achieved, limit {tpm:,} ({n} documents)", "value": ek_rate, "baseline": tpm,
         "ratio": ek_rate / tpm, "target": ">= 0.95", "met": ek_rate / tpm >= 0.95},
        {"measure": "share of requests answered 429", "value": ek_429, "baseline": None, "ratio": None,
         "target": "< 0.01", "met": ek_429 < 0.01},
        {"measure": "  burst-and-retry script: tokens/minute (vs limit)", "value": base_rate, "baseline": tpm,
         "ratio": base_rate / tpm, "target": "(baseline)"},
        {"measure": "  burst-and-retry script: share answered 429", "value": base_429, "baseline": None,
         "ratio": None, "target": "(baseline)"},
    ]  # fmt: skip
    report("ratelimit", ns, rows, {"extractkit_stub_stats": ek, "baseline_stub_stats": base,
                                   "elapsed_s": {"extractkit": elapsed, "baseline": base_elapsed}})  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
