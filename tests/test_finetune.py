"""The fine-tune flywheel: export, harvest, launch and status (respx on the real endpoint shapes)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from typer.testing import CliRunner

from extractkit import (
    ConfigError,
    Extractor,
    FewShot,
    FineTuned,
    FinetuneJobError,
    Outcome,
    Result,
    TrainingDataError,
    ZeroShot,
    load_examples,
)
from extractkit._results import Attempt
from extractkit._tiers import BoundTier
from extractkit.finetune import (
    Selection,
    collect,
    config_diff,
    export_finetune,
    harvest_examples,
    launch,
    status,
    with_finetuned_model,
)
from extractkit.ledger import Ledger

from .conftest import Invoice
from .fakes import BASE_URL

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:invoices:abc123"


def chain() -> Extractor[Invoice]:
    return Extractor(Invoice, tiers=[
        ZeroShot(model="gpt-4o-mini"),
        FewShot(model="gpt-4o-mini", examples=[{"input": "From: X Ltd\nTotal: 1", "output": {"issuer": "X Ltd", "total": 1}}]),
        FineTuned(model=FT_MODEL, prompt=None),
    ])  # fmt: skip


def text(i: int) -> str:
    return f"From: Firm {i} Ltd\nTotal: {i}.50"  # as the loader reads it (trailing whitespace stripped)


def record(ledger: Ledger, ex: Extractor[Invoice], body: str, *, ok: bool = True, tier: str = "zero_shot",
           value: Invoice | None = None, path: str | None = None, store: bool = True) -> None:  # fmt: skip
    from extractkit._chain import document_sha256

    i = int(re.findall(r"Firm (\d+)", body)[0])
    value = value or Invoice(issuer=f"Firm {i} Ltd", total=float(f"{i}.5"))
    attempts = [Attempt(tier=tier, model="gpt-4o-mini", number=1, outcome=Outcome.OK if ok else Outcome.SCHEMA_INVALID,
                        cost_usd=0.0001)]  # fmt: skip
    result = Result(value=value if ok else None, tier=tier if ok else None, attempts=attempts,
                    schema_hash=ex.schema_hash, document_sha256=document_sha256(body), latency_s=0.1)  # fmt: skip
    old = ledger.store_text
    ledger.store_text = store
    try:
        ledger.record(ex, result, text=body, path=path)
    finally:
        ledger.store_text = old


@pytest.fixture
def ledger(ledger_target):
    with Ledger(ledger_target) as lg:  # each test on SQLite, then on PostgreSQL
        yield lg


def test_export_uses_the_fine_tuned_tiers_own_messages_and_validated_json(ledger, tmp_path):
    ex = chain()
    for i in range(40):
        record(ledger, ex, text(i), tier="zero_shot" if i < 30 else "few_shot")
    for i in range(40, 43):
        record(ledger, ex, text(i), ok=False)  # failed extractions are not training data
    rep = export_finetune(ledger, Invoice, tmp_path / "ft", base="gpt-4o-mini-2024-07-18", tier=ex.tier("fine_tuned"))
    rows = [json.loads(x) for x in (tmp_path / "ft" / "train.jsonl").read_text().splitlines()]
    vals = [json.loads(x) for x in (tmp_path / "ft" / "validation.jsonl").read_text().splitlines()]
    assert rep.train_examples == len(rows) and rep.validation_examples == len(vals) and len(rows) + len(vals) == 40
    assert rep.sources == {"zero_shot": 30, "few_shot": 10}
    bound = BoundTier(ex.tier("fine_tuned"), Invoice)
    for row in rows + vals:
        system, user, assistant = row["messages"]
        doc = user["content"].rsplit("Firm ", 1)[1]
        i = int(doc.split(" ")[0])
        assert [system, user] == bound.messages(text(i))  # exactly what inference sends
        assert assistant == {"role": "assistant", "content": json.dumps({"issuer": f"Firm {i} Ltd", "total": i + 0.5,
                                                                         "date": None}, separators=(",", ":"))}  # fmt: skip
        assert "Firm X" not in user["content"]  # no few-shot examples
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["train_examples"] == len(rows) and manifest["selection"]["seed"] == 0
    # tokens counted per example; cost = training tokens x 3 epochs x $3.00 / 1M for gpt-4o-mini
    assert rep.train_tokens > 0 and rep.longest_tokens > 0 and rep.context_limit == 65_536
    assert rep.estimated_cost_usd == pytest.approx(rep.train_tokens * 3 * 3.00 / 1e6)
    assert any("under about 50" in w for w in rep.warnings)


def test_split_is_by_document_deterministic_and_stable(ledger):
    ex = chain()
    for i in range(60):
        record(ledger, ex, text(i))
    record(ledger, ex, text(0))  # the same document again: one example, not two
    a = collect(ledger, Invoice, Selection(seed=1))
    b = collect(ledger, Invoice, Selection(seed=1))
    docs = lambda xs: {e.document_sha256 for e in xs}  # noqa: E731
    assert len(a.all) == 60 and not docs(a.train) & docs(a.validation)
    assert docs(a.validation) == docs(b.validation) and 4 <= len(a.validation) <= 20
    assert docs(collect(ledger, Invoice, Selection(seed=2)).validation) != docs(a.validation)
    for i in range(60, 90):  # more documents never move the old ones
        record(ledger, ex, text(i))
    c = collect(ledger, Invoice, Selection(seed=1))
    assert docs(a.validation) <= docs(c.validation) and docs(a.train) <= docs(c.train)


def test_filters_corrections_leakage_and_missing_text(ledger, tmp_path):
    ex = chain()
    for i in range(20):
        record(ledger, ex, text(i), tier="zero_shot" if i % 2 else "few_shot")
    assert {e.source for e in collect(ledger, Invoice, Selection(tiers=("few_shot",))).all} == {"few_shot"}
    # eval documents are left out by default (leakage), in unless asked for
    from extractkit._chain import document_sha256

    run = ledger.start_run("eval")
    for i in range(3):
        ledger.record_eval_item(run, str(i), document_sha256(text(i)), None, {})
    got = collect(ledger, Invoice, Selection())
    assert len(got.all) == 17 and got.skipped["in an eval gold set (leakage)"] == 3
    assert len(collect(ledger, Invoice, Selection(include_eval_documents=True)).all) == 20
    # corrections override the ledger (by hash or by path)
    doc = tmp_path / "doc5.txt"
    doc.write_text(text(5))
    fixes = tmp_path / "fixes.jsonl"
    fixes.write_text(json.dumps({"document": document_sha256(text(4)), "value": {"issuer": "Fixed Ltd", "total": 4}})
                     + "\n" + json.dumps({"document": "doc5.txt", "value": {"issuer": "Five", "total": 5}}) + "\n")  # fmt: skip
    got = collect(ledger, Invoice, Selection(corrections=fixes))
    by = {e.document_sha256: e for e in got.all}
    assert by[document_sha256(text(4))].value["issuer"] == "Fixed Ltd" and got.sources["correction"] == 2
    assert by[document_sha256(text(5))].value["issuer"] == "Five"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"document": document_sha256(text(4)), "value": {"issuer": "No total"}}) + "\n")
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:1: the corrected value does not validate"):
        collect(ledger, Invoice, Selection(corrections=bad))
    # text not stored: re-read from the path when unchanged, skipped and counted when changed
    same, changed = tmp_path / "same.txt", tmp_path / "changed.txt"
    same.write_text(text(100))
    changed.write_text(text(101))
    record(ledger, ex, text(100), path=str(same), store=False)
    record(ledger, ex, text(101), path=str(changed), store=False)
    changed.write_text(text(101) + "edited\n")
    got = collect(ledger, Invoice, Selection(include_eval_documents=True))
    assert document_sha256(text(100)) in {e.document_sha256 for e in got.all}
    assert next(e for e in got.all if e.document_sha256 == document_sha256(text(100))).text == text(100)
    assert got.skipped["text not stored and the file changed or is gone"] == 1


def test_too_few_examples_is_an_error_that_says_why(ledger, tmp_path):
    ex = chain()
    for i in range(8):
        record(ledger, ex, text(i))
    with pytest.raises(TrainingDataError, match=r"needs at least 10.*Selected 8 validated documents"):
        export_finetune(ledger, Invoice, tmp_path / "ft")
    assert not (tmp_path / "ft" / "train.jsonl").exists()


def test_examples_longer_than_the_training_context_are_dropped(ledger, tmp_path, monkeypatch):
    ex = chain()
    for i in range(20):
        record(ledger, ex, text(i) + ("long line\n" * 400 if i < 3 else ""))
    monkeypatch.setitem(__import__("extractkit.finetune._export", fromlist=["x"]).TRAINING_CONTEXT, "gpt-4o-mini", 1000)
    rep = export_finetune(ledger, Invoice, tmp_path / "ft", selection=Selection(validation_fraction=0))
    assert rep.train_examples == 17 and rep.skipped == {"longer than the 1,000-token training context": 3}
    assert rep.longest_tokens <= 1000


def test_harvest_has_the_same_split_and_makes_a_usable_examples_file(ledger, tmp_path):
    ex = chain()
    for i in range(30):
        record(ledger, ex, text(i))
    rep = harvest_examples(ledger, Invoice, tmp_path / "pool.jsonl", selection=Selection(seed=3))
    got = collect(ledger, Invoice, Selection(seed=3))
    pool = load_examples(tmp_path / "pool.jsonl", Invoice)
    assert rep.examples == len(pool) == len(got.train) and rep.withheld == len(got.validation)
    assert {e.input for e in pool} == {e.text for e in got.train}
    # the pool plugs into a FewShot tier
    Extractor(Invoice, tiers=[FewShot(model="gpt-4o-mini", examples=str(tmp_path / "pool.jsonl"))])


def test_no_secret_reaches_exported_files(ledger, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789abcdef")
    ex = chain()
    for i in range(12):
        record(ledger, ex, text(i))
    export_finetune(ledger, Invoice, tmp_path / "ft")
    for f in (tmp_path / "ft").iterdir():
        assert "sk-live" not in f.read_text()


# -- jobs, against the real endpoint shapes ----------------------------------------------------


def file_object(fid: str, name: str) -> dict:
    return {"id": fid, "object": "file", "bytes": 100, "created_at": 1_800_000_000, "filename": name,
            "purpose": "fine-tune", "status": "processed"}  # fmt: skip


def job_object(status: str = "validating_files", model: str | None = None, error: dict | None = None) -> dict:
    return {
        "id": "ftjob-abc123", "object": "fine_tuning.job", "created_at": 1_800_000_000, "finished_at": None,
        "model": "gpt-4o-mini-2024-07-18", "fine_tuned_model": model, "organization_id": "org-1",
        "status": status, "training_file": "file-train", "validation_file": "file-val", "result_files": [],
        "trained_tokens": 12345 if model else None, "hyperparameters": {"n_epochs": 3}, "seed": 7,
        "error": error,
    }  # fmt: skip


def events_page() -> dict:
    return {"object": "list", "has_more": False, "data": [
        {"id": "ftevent-2", "object": "fine_tuning.job.event", "created_at": 1_800_000_100, "level": "info",
         "message": "Step 10/30: training loss=0.12", "type": "metrics"},
        {"id": "ftevent-1", "object": "fine_tuning.job.event", "created_at": 1_800_000_050, "level": "info",
         "message": "Fine-tuning job started", "type": "message"},
    ]}  # fmt: skip


@pytest.fixture
def export_dir(ledger, tmp_path):
    ex = chain()
    for i in range(20):
        record(ledger, ex, text(i))
    export_finetune(ledger, Invoice, tmp_path / "ft")
    return tmp_path / "ft"


def test_launch_uploads_creates_and_records_then_status_polls(mock_api, ledger, export_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", BASE_URL)
    uploads = mock_api.post("/files").mock(side_effect=[
        httpx.Response(200, json=file_object("file-train", "train.jsonl")),
        httpx.Response(200, json=file_object("file-val", "validation.jsonl")),
    ])  # fmt: skip
    create = mock_api.post("/fine_tuning/jobs").mock(return_value=httpx.Response(200, json=job_object()))
    job = launch(ledger, export_dir / "train.jsonl", export_dir / "validation.jsonl", suffix="invoices", seed=7,
                 n_epochs=3)  # fmt: skip
    assert job.id == "ftjob-abc123" and job.status == "validating_files"
    first = uploads.calls[0].request
    assert b'name="purpose"' in first.content and b"fine-tune" in first.content
    assert b'filename="train.jsonl"' in first.content
    assert b'"messages"' in first.content  # the training file itself
    body = json.loads(create.calls[0].request.content)
    assert body == {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-train", "validation_file": "file-val",
                    "suffix": "invoices", "seed": 7,
                    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}}  # fmt: skip
    assert create.calls[0].request.headers["authorization"] == "Bearer sk-test-not-a-real-key"
    [row] = ledger.query("SELECT * FROM finetune_jobs")
    assert (row["status"], row["suffix"], row["n_epochs"]) == ("validating_files", "invoices", 3)
    assert json.loads(row["manifest_json"])["train_examples"] > 0
    # status: retrieve + events, recorded; the latest job is the default
    mock_api.get("/fine_tuning/jobs/ftjob-abc123").mock(
        return_value=httpx.Response(200, json=job_object("succeeded", FT_MODEL)))
    mock_api.get("/fine_tuning/jobs/ftjob-abc123/events").mock(return_value=httpx.Response(200, json=events_page()))
    done = status(ledger)
    assert (done.status, done.fine_tuned_model, done.done) == ("succeeded", FT_MODEL, True)
    assert [e["message"] for e in done.events] == ["Fine-tuning job started", "Step 10/30: training loss=0.12"]
    [row] = ledger.query("SELECT * FROM finetune_jobs")
    assert (row["status"], row["fine_tuned_model"], row["trained_tokens"]) == ("succeeded", FT_MODEL, 12345)
    assert ledger.query("SELECT COUNT(*) FROM finetune_events")[0][0] == 2
    assert "sk-test" not in json.dumps([dict(r) for r in ledger.query("SELECT * FROM finetune_jobs")])


def test_launch_failure_names_the_step_and_hides_the_key(mock_api, ledger, export_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", BASE_URL)
    mock_api.post("/files").mock(return_value=httpx.Response(200, json=file_object("file-train", "train.jsonl")))
    mock_api.post("/fine_tuning/jobs").mock(return_value=httpx.Response(400, json={"error": {
        "message": "invalid training file: key sk-test-not-a-real-key", "type": "invalid_request_error",
        "code": "invalid_file", "param": None}}))  # fmt: skip
    with pytest.raises(FinetuneJobError, match="creating the fine-tuning job") as info:
        launch(ledger, export_dir / "train.jsonl")
    assert "sk-test-not-a-real-key" not in str(info.value) and "invalid training file" in str(info.value)
    assert ledger.query("SELECT COUNT(*) FROM finetune_jobs")[0][0] == 0
    with pytest.raises(ConfigError, match="no fine-tuning job"):
        status(ledger)


def test_failed_job_reports_its_error(mock_api, ledger, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", BASE_URL)
    mock_api.get("/fine_tuning/jobs/ftjob-abc123").mock(return_value=httpx.Response(200, json=job_object(
        "failed", error={"code": "invalid_training_file", "message": "line 3 is not valid JSON", "param": None})))  # fmt: skip
    mock_api.get("/fine_tuning/jobs/ftjob-abc123/events").mock(return_value=httpx.Response(200, json=events_page()))
    job = status(ledger, "ftjob-abc123")
    assert job.status == "failed" and job.error == "invalid_training_file: line 3 is not valid JSON"


# -- the config --------------------------------------------------------------------------------

CONFIG = '''schema = "invoice_schema:Invoice"  # the schema

[[tiers]]
kind = "zero_shot"
model = "gpt-4o-mini"

[[tiers]]
kind = "fine_tuned"
model = "ft:gpt-4o-mini-2024-07-18:acme:old:zzz"  # last month's
max_reasks = 1

[batch]
concurrency = 4
'''


def test_with_finetuned_model_replaces_or_appends_keeping_comments():
    new = with_finetuned_model(CONFIG, FT_MODEL)
    assert f'model = "{FT_MODEL}"  # last month\'s' in new and "# the schema" in new
    assert new.count("[[tiers]]") == 2 and new.replace(FT_MODEL, "ft:gpt-4o-mini-2024-07-18:acme:old:zzz") == CONFIG
    no_ft = CONFIG.split("[[tiers]]\nkind = \"fine_tuned\"")[0] + "[batch]\nconcurrency = 4\n"
    added = with_finetuned_model(no_ft, FT_MODEL)
    assert added.endswith(f'[[tiers]]\nkind = "fine_tuned"\nmodel = "{FT_MODEL}"\n')
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    parsed = tomllib.loads(added)
    assert parsed["tiers"][-1] == {"kind": "fine_tuned", "model": FT_MODEL} and parsed["batch"] == {"concurrency": 4}


def test_status_cli_writes_the_model_into_the_config_after_a_diff(mock_api, tmp_path, monkeypatch, ledger):
    from extractkit.cli import app

    monkeypatch.setenv("OPENAI_BASE_URL", BASE_URL)
    mock_api.get("/fine_tuning/jobs/ftjob-abc123").mock(
        return_value=httpx.Response(200, json=job_object("succeeded", FT_MODEL)))
    mock_api.get("/fine_tuning/jobs/ftjob-abc123/events").mock(return_value=httpx.Response(200, json=events_page()))
    cfg = tmp_path / "extractkit.toml"
    cfg.write_text(CONFIG)
    ledger.close()
    result = CliRunner().invoke(app, ["finetune", "status", "ftjob-abc123", "--ledger", ledger.target,
                                      "--write-config", str(cfg)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"+model = \"{FT_MODEL}\"" in result.output and "-model = \"ft:gpt-4o-mini-2024-07-18:acme:old:zzz\"" in result.output
    assert FT_MODEL in cfg.read_text() and (tmp_path / "extractkit.toml.bak").read_text() == CONFIG
    assert config_diff(cfg, cfg.read_text()) == ""


# -- the whole flywheel, as a user runs it -----------------------------------------------------


def flywheel_responder(request: httpx.Request) -> httpx.Response:
    """The fine-tuned model is right everywhere; few-shot with the harvested pool on even documents."""
    from .fakes import completion

    body = json.loads(request.content)
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    i = int(re.findall(r"From: Firm (\d+) Ltd", user)[-1])
    model, name = body["model"], body.get("tools", [{}])[0].get("function", {}).get("name", "Invoice")
    value = {"issuer": f"Firm {i} Ltd", "total": i + 0.5}
    if model == FT_MODEL:
        return httpx.Response(200, json=completion(content=json.dumps(value), model=model))
    if i % 2:
        return httpx.Response(200, json=completion("{nope", name=name, model=model))
    return httpx.Response(200, json=completion(value, name=name, model=model))


def test_report_export_launch_status_eval(mock_api, tmp_path, monkeypatch, ledger_target):
    from extractkit.cli import app

    monkeypatch.setenv("OPENAI_BASE_URL", BASE_URL)
    monkeypatch.chdir(tmp_path)
    led = ledger_target
    with Ledger(led) as ledger:  # what earlier batches validated
        ex = chain()
        for i in range(100, 140):
            record(ledger, ex, text(i), tier="few_shot")
    cfg = tmp_path / "extractkit.toml"
    cfg.write_text(f'schema = "tests.conftest:Invoice"\n[ledger]\n{"url" if "://" in led else "path"} = "{led}"\n\n[[tiers]]\nkind = "zero_shot"\n'
                   f'model = "gpt-4o-mini"\nbase_url = "{BASE_URL}"\n')  # fmt: skip
    run = CliRunner().invoke
    exported = run(app, ["finetune", "export", "-c", str(cfg), "-o", "ft", "--json"])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["train_examples"] >= 25
    harvested = run(app, ["examples", "harvest", "-c", str(cfg), "-o", "pool.jsonl"])
    assert harvested.exit_code == 0, harvested.output
    mock_api.post("/files").mock(side_effect=[httpx.Response(200, json=file_object("file-train", "train.jsonl")),
                                              httpx.Response(200, json=file_object("file-val", "validation.jsonl"))])  # fmt: skip
    mock_api.post("/fine_tuning/jobs").mock(return_value=httpx.Response(200, json=job_object()))
    launched = run(app, ["finetune", "launch", "--dir", "ft", "-c", str(cfg), "--suffix", "invoices"])
    assert launched.exit_code == 0 and "ftjob-abc123" in launched.output, launched.output
    mock_api.get("/fine_tuning/jobs/ftjob-abc123").mock(
        return_value=httpx.Response(200, json=job_object("succeeded", FT_MODEL)))
    mock_api.get("/fine_tuning/jobs/ftjob-abc123/events").mock(return_value=httpx.Response(200, json=events_page()))
    polled = run(app, ["finetune", "status", "--write-config", str(cfg)])  # the job is in the config's ledger
    assert polled.exit_code == 0 and FT_MODEL in cfg.read_text(), polled.output
    # few-shot with the harvested pool beside the model fine-tuned on the same data
    cfg.write_text(cfg.read_text().replace('model = "ft:', f'base_url = "{BASE_URL}"\nmodel = "ft:')
                   + f'\n[[tiers]]\nkind = "few_shot"\nname = "few_shot_harvested"\nmodel = "gpt-4o-mini"\n'
                   f'base_url = "{BASE_URL}"\nexamples = "pool.jsonl"\nmax_reasks = 0\n')  # fmt: skip
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"document": text(i), "expected": {"issuer": f"Firm {i} Ltd", "total": i + 0.5}})
                            + "\n" for i in range(10)))  # fmt: skip
    mock_api.post("/chat/completions").mock(side_effect=flywheel_responder)
    evaluated = run(app, ["eval", str(gold), "-c", str(cfg), "--tier", "fine_tuned", "--tier", "few_shot_harvested",
                          "--json"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    ev = json.loads(evaluated.output[evaluated.output.index("{"):])
    [cmp] = ev["comparisons"]
    assert (cmp["a"], cmp["b"], cmp["correct_a"], cmp["correct_b"]) == ("few_shot_harvested", "fine_tuned", 5, 10)
    # eval's forced answers on the gold documents are validated extractions too: the next export leaves them out
    again = json.loads(run(app, ["finetune", "export", "-c", str(cfg), "-o", "ft2", "--json"]).output)
    first = json.loads(exported.output)
    assert again["skipped"] == {"in an eval gold set (leakage)": 10}
    assert again["train_examples"] + again["validation_examples"] == first["train_examples"] + first["validation_examples"]
