"""Against a real server nobody here wrote: llama.cpp's own server (xllamacpp) + SmolLM2-135M on
127.0.0.1.

These tests check the pipeline's behaviour on a real model (bounds, re-asks, overflow,
timeouts, slots, the server's lifecycle, batch, report), never its accuracy: a 135M model gets
most invoices wrong. With EXTRACTKIT_REQUIRE_LOCAL set (CI) a missing server is an error, never a
skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from extractkit import EscalationPolicy, Extractor, FewShot, LocalModelError, Outcome, RetryPolicy, ZeroShot
from extractkit.local import N_CTX, LocalServer, check_installed, shared_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

try:
    check_installed()
    MISSING = None
except Exception as exc:  # noqa: BLE001
    MISSING = str(exc)
if MISSING and os.environ.get("EXTRACTKIT_REQUIRE_LOCAL"):
    raise RuntimeError(f"EXTRACTKIT_REQUIRE_LOCAL is set but {MISSING}")
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

sys.path.insert(0, str(EXAMPLES))
from invoice_schema import Invoice  # noqa: E402

from .conftest import CORPUS  # noqa: E402


@pytest.fixture
def corpus() -> Path:
    # the shared corpus is as required as the server: in CI a missing one fails, never skips
    if not CORPUS.is_dir():
        if os.environ.get("EXTRACTKIT_REQUIRE_LOCAL"):
            pytest.fail(f"EXTRACTKIT_REQUIRE_LOCAL is set but the shared corpus is not at {CORPUS}")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="module")
def server():
    # base_url="local" starts the shared server on first use; here we start it up front
    return shared_server()


def local(**kw):
    return ZeroShot(model="local", base_url="local", timeout_s=300, **kw)


def test_chain_on_a_real_invoice_is_bounded(server, corpus):
    text = (corpus / "Orlen.txt").read_text()
    tier = local(max_reasks=2)
    ex = Extractor(Invoice, tiers=[tier])
    result = ex.extract(text)
    bound = ex._bound[tier.name]
    from extractkit._schema import output_token_budget

    assert result.attempts, "nothing was recorded"
    # strict json_schema, grammar-constrained by the server: no tool-call detour
    assert bound.response_format is not None and bound.response_format["type"] == "json_schema"
    for a in result.attempts:
        # every request carried an output bound: no runaway to the 4,096-token context
        assert a.usage.completion_tokens <= output_token_budget(bound.schema)
        # re-asks stayed inside the context: the server never answered 400 for overflow
        assert a.status_code in (200, None)
        if a.finish_reason == "stop":  # the grammar lets out JSON only
            assert a.outcome is not Outcome.INVALID_JSON, a.output
    assert 1 <= len(result.attempts) <= 3
    if result.ok:  # the grounding guard only lets values through that occur in the document
        assert str(result.value.invoice_number) in text


def test_escalation_and_few_shot_on_the_real_server(server, corpus):
    text = (corpus / "Orlen.txt").read_text()
    tiers = [local(max_reasks=0), FewShot(model="local", base_url="local", timeout_s=300, max_reasks=0,
                                          examples=EXAMPLES / "invoices.jsonl", k=1)]  # fmt: skip
    result = Extractor(Invoice, tiers=tiers).extract(text)
    tiers_run = [a.tier for a in result.attempts]
    if result.attempts[0].ok:  # zero-shot won: nothing else ran
        assert tiers_run == ["zero_shot"] and result.tier == "zero_shot"
    else:  # its failure escalated: few-shot ran next, and decided the result
        assert tiers_run[0] == "zero_shot" and tiers_run[-1] == "few_shot"
        assert result.tier in (None, "few_shot")


def test_document_over_the_context_is_its_own_outcome(server, corpus):
    text = (corpus / "Orlen.txt").read_text() * 20
    # long_documents = "refuse": the document is not chunked (the default, "chunk", is tests/test_chunk_chain.py's)
    result = Extractor(Invoice, tiers=[local(long_documents="refuse")]).extract(text)
    [a] = result.attempts  # not sent, not retried
    assert a.outcome is Outcome.CONTEXT_OVERFLOW and "not sent" in a.error


def test_server_side_overflow_is_not_retried(server, corpus):
    text = (corpus / "Orlen.txt").read_text() * 20
    # claim a bigger window than the server has, so the request is sent and the server refuses
    result = Extractor(Invoice, tiers=[local(context_window=100_000)]).extract(text)
    [a] = result.attempts
    assert a.outcome is Outcome.CONTEXT_OVERFLOW and a.status_code == 400


def test_batch_and_report_cli_against_the_real_server(server, corpus, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "Orlen.txt").write_text((corpus / "Orlen.txt").read_text())
    (docs / "oyo.pdf").write_bytes((corpus / "oyo.pdf").read_bytes())
    cfg = tmp_path / "local.toml"
    cfg.write_text(
        (EXAMPLES / "local.toml").read_text().replace('"invoices.jsonl"', f'"{EXAMPLES / "invoices.jsonl"}"')
    )
    env = dict(os.environ, EXTRACTKIT_LOCAL_URL=server.base_url, PYTHONPATH=str(EXAMPLES))
    env.pop("OPENAI_API_KEY", None)
    ledger, out = tmp_path / "l.sqlite3", tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "extractkit", "extract", str(docs), "--config", str(cfg),
         "--ledger", str(ledger), "--out", str(out), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1200,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == ["Orlen.txt", "oyo.pdf"]
    assert all(r["attempts"] >= 1 for r in rows)
    rep = subprocess.run([sys.executable, "-m", "extractkit", "report", "--ledger", str(ledger), "--json"],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    data = json.loads(rep.stdout)
    assert data["totals"]["documents"] == 2 and data["tiers"][0]["tier"] == "zero_shot"
    assert data["tiers"][0]["cost_usd"] == 0.0  # local: no API bill


def test_per_attempt_timeout_is_enforced(corpus):
    # a server of its own, so abandoned requests do not hold up the shared one
    with LocalServer() as own:
        tier = ZeroShot(model="local", base_url=own.base_url, api_key="x", timeout_s=0.05,
                        context_window=4096)  # fmt: skip
        policy = EscalationPolicy(retry=RetryPolicy(max_attempts=2, initial_delay_s=0.01))
        result = Extractor(Invoice, tiers=[tier], policy=policy).extract((corpus / "Orlen.txt").read_text())
    assert [a.outcome for a in result.attempts] == [Outcome.TIMEOUT, Outcome.TIMEOUT]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_slots_share_the_context_and_each_keeps_the_tier_window():
    # llama.cpp splits n_ctx across its slots: two slots get 2 x 4,096 tokens, 4,096 each
    with LocalServer(n_parallel=2) as two:
        props = _get(f"http://127.0.0.1:{two.port}/props")
        assert props["total_slots"] == 2
        assert props["default_generation_settings"]["n_ctx"] == N_CTX
        assert _get(two.base_url + "/models")["data"][0]["id"] == "local"


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # a zombie waiting for init to reap it: the server is down


def test_the_server_stops_when_its_parent_is_killed(tmp_path):
    """A parent killed with SIGKILL runs no atexit handler: the server notices and exits."""
    script = (
        "import sys, time\n"
        "from extractkit.local import LocalServer\n"
        "s = LocalServer().start()\n"
        "print(s.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert not _gone(server_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
    deadline = time.monotonic() + 15
    while not _gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(server_pid), "the server outlived its parent"


def test_a_server_that_cannot_load_its_model_is_a_local_model_error(tmp_path, monkeypatch):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file")
    monkeypatch.setenv("EXTRACTKIT_LOCAL_MODEL", str(bad))
    with pytest.raises(LocalModelError, match="the local model server exited with code"):
        LocalServer().start(timeout_s=60)


def test_local_serve_runs_in_the_foreground_until_interrupted():
    from extractkit.local import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "extractkit", "local", "serve", "--port", str(port),
                             "--parallel", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/health").get("status") == "ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "local serve did not come up"
            time.sleep(0.2)
        assert _get(f"http://127.0.0.1:{port}/props")["total_slots"] == 2
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
