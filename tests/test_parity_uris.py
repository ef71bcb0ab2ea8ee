"""Documents may be URIs wherever documents are accepted (issue 17): a gold file's documents, and the
documents fine-tuning export reads again when the ledger keeps no text, on object storage (moto's
S3 server) as ``extract`` takes them, on both engines."""

from __future__ import annotations

import json

from extractkit.evaluate import build_eval, evaluate, load_gold
from extractkit.finetune import Selection, export_finetune
from extractkit.ledger import Ledger

from .conftest import Invoice


def test_gold_documents_may_be_s3_uris(mock_api, s3, tmp_path, ledger_target):
    from .test_eval import doc, eval_chain, responder

    mock_api.post("/chat/completions").mock(side_effect=responder)
    bucket = s3.new_bucket()
    for i in range(4):
        s3.put(bucket, f"gold/{i}.txt", doc(i))
    gold = tmp_path / "gold.jsonl"
    rows = [{"id": str(i), "document": f"s3://{bucket}/gold/{i}.txt",
             "expected": {"issuer": f"Firm {i} Ltd", "total": f"{i}.50"}} for i in range(5)]  # 4 is not there
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_gold(gold, Invoice)  # not "document file not found": a URI is read when scored
    assert [str(i.path) for i in items] == [r["document"] for r in rows]
    with Ledger(ledger_target) as ledger:
        s = evaluate(eval_chain(), items, ledger)
        ev = build_eval(ledger, s.run_id)
    assert (s.items, s.extracted) == (5, 12)
    assert [u["gold_id"] for u in s.unreadable] == ["4"] and "no such object" in s.unreadable[0]["error"]
    zero = next(t for t in ev["tiers"] if t["tier"] == "zero_shot")
    assert zero["correct"] == 4  # documents 0-3, read from the bucket
    assert {d["path"] for d in ev["documents_view"]} == {f"s3://{bucket}/gold/{i}.txt" for i in range(4)}


def test_export_reads_documents_from_s3_again_when_the_ledger_keeps_no_text(s3, tmp_path, ledger_target):
    from .test_finetune import chain, record, text

    bucket = s3.new_bucket()
    for i in range(30):
        s3.put(bucket, f"in/{i:02d}.txt", text(i))
    s3.put(bucket, "in/28.txt", "From: Firm 28 Ltd\nTotal: changed since")  # no longer the document extracted
    ex = chain()
    with Ledger(ledger_target) as ledger:
        for i in range(31):  # 30 is not in the bucket (any more)
            record(ledger, ex, text(i), path=f"s3://{bucket}/in/{i:02d}.txt", store=False)
        rep = export_finetune(ledger, Invoice, tmp_path / "ft", tier=ex.tier("fine_tuned"),
                              selection=Selection(validation_fraction=0))  # fmt: skip
    assert rep.skipped == {"text not stored and the file changed or is gone": 2}
    assert rep.train_examples == 29
    rows = [json.loads(x) for x in (tmp_path / "ft" / "train.jsonl").read_text().splitlines()]
    assert sorted(r["messages"][-2]["content"].count("From: Firm 5 Ltd") for r in rows) == [0] * 28 + [1]
