"""Issue 18, section 3: `extractkit extract --via batch` SIGKILLed after an upload (its answer
lost), after a create (its answer lost) and mid-ingest, then the same command again: every wave
part is one provider batch (creates counted on the fake, by ``metadata.extractkit_job``) and the
final ledger is the one an unkilled run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from .fakes_batch import FakeBatchServer, ScriptedResponder
from .test_batch import ROOT, cli
from .test_via_parity import ledger_view
from .test_waves import DOCS, T1, T2, script

MID_INGEST = """
import os, signal, sys
import extractkit.batch._waves as waves
from extractkit.ledger import Ledger
waves.INGEST_CHUNK = 2
real, calls = Ledger.finish_batch_items, []
def finish(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the first chunk of wave 1 is written, the second is not
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
Ledger.finish_batch_items = finish
from extractkit.cli import main
sys.argv = ["extractkit", *sys.argv[1:]]
main()
"""


def write_config(tmp: Path, base_url: str) -> Path:
    cfg = tmp / "extractkit.toml"
    tiers = "".join(f'[[tiers]]\nname = "{name}"\nkind = "zero_shot"\nmodel = "{model}"\nbase_url = "{base_url}"\n'
                    "max_reasks = 2\n" for name, model in (("t1", T1), ("t2", T2)))  # fmt: skip
    cfg.write_text(f'schema = "tests.conftest:Invoice"\n{tiers}')
    return cfg


def make_docs(tmp: Path) -> Path:
    folder = tmp / "docs"
    folder.mkdir()
    for marker, text in DOCS.items():
        (folder / f"{marker[-1].lower()}.txt").write_text(text)
    return folder


def creates(server: FakeBatchServer) -> list[str]:
    return [b["metadata"]["extractkit_job"] for m, p, b in server.calls if (m, p) == ("POST", "/v1/batches")]


def extract_args(docs: Path, cfg: Path, ledger: Path) -> list[str]:
    return ["extract", str(docs), "-c", str(cfg), "--ledger", str(ledger), "--via", "batch", "--poll", "0",
            "--json"]  # fmt: skip


def final_ledger(ledger: Path) -> dict[str, Any]:
    from extractkit import Ledger

    with Ledger(ledger) as led:
        rows = ledger_view(led)
    for row in rows.values():  # two runs in two folders: the same file names
        row["path"] = Path(row["path"]).name
    return rows


@pytest.fixture(scope="module")
def unkilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], int, dict[Any, int]]:
    tmp = tmp_path_factory.mktemp("unkilled")
    docs = make_docs(tmp)
    responder = script()
    with FakeBatchServer(responder, advance_on_poll=3) as server:
        cfg = write_config(tmp, server.base_url)
        done = cli(*extract_args(docs, cfg, tmp / "l.sqlite3"))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] == 5
        n = len(creates(server))
    return final_ledger(tmp / "l.sqlite3"), n, dict(responder.calls)


@pytest.mark.parametrize("where", ["after_upload", "after_create", "mid_ingest"])
def test_killed_and_run_again(tmp_path: Path, where: str, unkilled: tuple[dict[str, Any], int, dict[Any, int]]) -> None:
    expected, n_batches, expected_calls = unkilled
    assert n_batches == 4  # wave 1 (5 lines), 2 (re-ask, re-ask, 429 retry), 3 (re-ask), 4 (tier 2)
    docs = make_docs(tmp_path)
    ledger = tmp_path / "l.sqlite3"
    responder: ScriptedResponder = script()
    with FakeBatchServer(responder, advance_on_poll=3) as server:
        cfg = write_config(tmp_path, server.base_url)
        args = extract_args(docs, cfg, ledger)
        env = dict(os.environ, OPENAI_API_KEY="sk-fake", EXTRACTKIT_LEDGER="")
        child: dict[str, subprocess.Popen[str]] = {}
        killed = threading.Event()
        real_handle = server.handle
        seen: dict[str, int] = {}

        def handle(method: str, path: str, query: Any, body: Any) -> Any:
            answer = real_handle(method, path, query, body)  # the provider did it ...
            seen[path] = seen.get(path, 0) + 1
            hit = (where == "after_upload" and (method, path) == ("POST", "/v1/files") and seen[path] == 1) or (
                where == "after_create" and (method, path) == ("POST", "/v1/batches") and seen[path] == 2
            )
            if hit and not killed.is_set():  # ... and the client dies before it reads the answer
                killed.set()
                os.kill(child["p"].pid, signal.SIGKILL)
            return answer

        server.handle = handle  # type: ignore[method-assign]
        cmd = [sys.executable, "-c", MID_INGEST, *args] if where == "mid_ingest" else [
            sys.executable, "-m", "extractkit", *args]  # fmt: skip
        child["p"] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)  # fmt: skip
        _, stderr = child["p"].communicate(timeout=300)
        assert child["p"].returncode == -signal.SIGKILL, stderr
        if where == "after_upload":
            assert creates(server) == [] and len(server.files) == 1
        if where == "after_create":
            assert len(creates(server)) == 2
        if where == "mid_ingest":
            assert len(creates(server)) == 1 and server.batch(1).status == "completed"
        server.handle = real_handle  # type: ignore[method-assign]
        again = cli(*args)
        assert again.returncode == 0, again.stderr
        summary = json.loads(again.stdout)
        assert summary["status"] == "done"
        jobs = creates(server)
        assert len(jobs) == len(set(jobs)) == n_batches  # one provider batch per wave part, never two
        status = json.loads(cli("batch", "status", "-c", str(cfg), "--ledger", str(ledger), "--json").stdout)
        assert len(status["parts"]) == n_batches and status["open_parts"] == 0
        assert sorted(p["provider_batch_id"] for p in status["parts"]) == sorted(server.batches)
    assert responder.calls == expected_calls  # every line run once: nothing sent twice
    assert final_ledger(ledger) == expected
