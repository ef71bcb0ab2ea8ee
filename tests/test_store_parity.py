"""The same extractions read the same on both engines (issue 17, item 4): eval, fine-tuning export
and examples harvest give identical results from a SQLite and a PostgreSQL ledger."""

from __future__ import annotations

from typing import Any

from extractkit.evaluate import build_eval, evaluate
from extractkit.finetune import Selection, export_finetune, harvest_examples
from extractkit.ledger import Ledger

from .conftest import Invoice


def _without(obj: Any, drop: tuple[str, ...]) -> Any:
    """``obj`` without the keys that differ between two runs by nature (ids, timings)."""
    if isinstance(obj, dict):
        return {k: _without(v, drop) for k, v in obj.items() if not any(d in k for d in drop)}
    if isinstance(obj, list):
        return [_without(v, drop) for v in obj]
    return obj


def test_eval_reads_the_same_from_sqlite_and_postgres(mock_api, tmp_path, pg_url):
    from .test_eval import GOLD, eval_chain, responder

    mock_api.post("/chat/completions").mock(side_effect=responder)
    built = []
    for target in (str(tmp_path / "l.sqlite3"), pg_url):
        with Ledger(target) as ledger:
            assert ledger.engine == ("postgresql" if target == pg_url else "sqlite")
            s = evaluate(eval_chain(), GOLD, ledger, concurrency=8)
            assert (s.items, s.extracted) == (40, 120)
            built.append(_without(build_eval(ledger, s.run_id), ("run_id", "queries", "latency")))
    sqlite, postgres = built
    assert sqlite["documents"] == 40 and len(sqlite["documents_view"]) == 40  # a real comparison
    for key in sqlite:
        assert postgres[key] == sqlite[key], key
    assert postgres == sqlite


def test_finetune_export_and_harvest_are_the_same_from_sqlite_and_postgres(tmp_path, pg_url):
    from .test_finetune import chain, record, text

    outputs: list[dict[str, Any]] = []
    for name, target in (("sqlite", str(tmp_path / "l.sqlite3")), ("postgresql", pg_url)):
        out = tmp_path / name
        with Ledger(target) as ledger:
            assert ledger.engine == name
            ex = chain()
            for i in range(60):
                record(ledger, ex, text(i), tier="zero_shot" if i < 40 else "few_shot", ok=i % 7 != 3)
            rep = export_finetune(ledger, Invoice, out / "ft", base="gpt-4o-mini-2024-07-18",
                                  tier=ex.tier("fine_tuned"), selection=Selection(seed=5))  # fmt: skip
            pool = harvest_examples(ledger, Invoice, out / "pool.jsonl", selection=Selection(seed=5))
        files = {p.name: p.read_bytes() for p in sorted((out / "ft").iterdir()) if p.name != "manifest.json"}
        outputs.append({"report": _without(rep.__dict__, ("path", "dir", "_file")), "files": files,
                        "pool": (out / "pool.jsonl").read_bytes(), "examples": pool.examples})  # fmt: skip
    sqlite, postgres = outputs
    assert sqlite["files"]["train.jsonl"] and sqlite["examples"] > 0  # a real comparison
    assert postgres == sqlite
