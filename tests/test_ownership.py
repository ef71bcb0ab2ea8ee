"""Who owns what (issue 15, point 1): a driver passes what its run needs, and closes only what it opened.

The batch runner and eval record into the ledger they are given and pace with the limiter they are
given, without changing the extractor (``Extractor.aextract_in_run``); they leave the extractor
open for its owner, and the ledger open for its own. The ledger and the limiter are typed by
protocols (``RecordingLedger``, ``Limiter``) that mypy and ``isinstance`` check.
"""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from extractkit import Extractor, ZeroShot
from extractkit.batch import BatchRunner, Limiter, RateLimiter
from extractkit.evaluate import GoldItem, aevaluate
from extractkit.ledger import Ledger, RecordingLedger

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, echo_invoice_responder

PACKAGE = Path(__file__).resolve().parents[1] / "extractkit"


def echo(request: httpx.Request) -> httpx.Response:
    status, body, headers = echo_invoice_responder(json.loads(request.content))
    return httpx.Response(status, json=body, headers=headers)


def invoice(i: int) -> str:
    return f"From: Company {i} Ltd\nTotal: {i}.50\n"


def tier(**kw: Any) -> ZeroShot:
    return ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0, **kw)


@pytest.fixture
def closed_clients(monkeypatch: pytest.MonkeyPatch) -> list[openai.AsyncOpenAI]:
    """Every openai client closed during the test (the extractor's connections)."""
    closed: list[openai.AsyncOpenAI] = []
    real = openai.AsyncOpenAI.close

    async def close(self: openai.AsyncOpenAI) -> None:
        closed.append(self)
        await real(self)

    monkeypatch.setattr(openai.AsyncOpenAI, "close", close)
    return closed


# -- the batch runner and eval leave the extractor, and the caller's ledger, as they found them ---


async def test_a_batch_run_leaves_the_extractor_open_and_its_own_ledger_in_place(mock_api, tmp_path, closed_clients):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(invoice(i))
    own, theirs = tmp_path / "own.sqlite3", tmp_path / "batch.sqlite3"
    async with Extractor(Invoice, [tier()], ledger=own) as ex:
        assert (await ex.aextract(invoice(7))).extraction_id is not None  # starts the library run
        opened = ex.ledger
        with Ledger(theirs) as caller:
            summary = await BatchRunner(ex, caller).run([docs])
            assert (summary.status, summary.ok) == ("done", 3)
            assert ex.ledger is opened  # not replaced by the batch's ledger
            assert closed_clients == []  # the extractor's connections were left open
            assert caller.query("SELECT count(*) AS n FROM extractions")[0]["n"] == 3  # and the ledger
        again = await ex.aextract(invoice(8))  # still usable, recording where it did before
        assert again.ok and again.extraction_id is not None
        assert route.call_count == 5
    assert len(closed_clients) == 1  # closed once, by its owner (``async with``)
    assert db_rows(own, "SELECT kind, status, n_documents FROM runs") == [("library", "done", 2)]
    assert db_rows(own, "SELECT count(*) FROM extractions") == [(2,)]
    assert db_rows(theirs, "SELECT kind, status, n_documents FROM runs") == [("batch", "done", 3)]


async def test_an_eval_leaves_the_extractor_open_and_its_own_ledger_in_place(mock_api, tmp_path, closed_clients):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    gold = [GoldItem(str(i), {"issuer": f"Company {i} Ltd", "total": f"{i}.50"}, text=invoice(i)) for i in range(3)]
    own, theirs = tmp_path / "own.sqlite3", tmp_path / "eval.sqlite3"
    async with Extractor(Invoice, [tier()], ledger=own) as ex:
        await ex.aextract(invoice(7))
        opened = ex.ledger
        with Ledger(theirs) as caller:
            summary = await aevaluate(ex, gold, caller)
            assert (summary.status, summary.extracted) == ("done", 3)
            assert ex.ledger is opened and closed_clients == []
            assert caller.query("SELECT count(*) AS n FROM eval_results")[0]["n"] == 3
        assert (await ex.aextract(invoice(8))).ok
    assert len(closed_clients) == 1
    assert db_rows(own, "SELECT kind, status, n_documents FROM runs") == [("library", "done", 2)]
    assert db_rows(theirs, "SELECT kind, status FROM runs") == [("eval", "done")]


async def test_a_batch_paces_with_its_own_limiter_and_leaves_the_extractors_alone(mock_api, tmp_path, monkeypatch):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    used: list[object] = []
    real = RateLimiter.acquire

    async def acquire(self: RateLimiter, tokens: int) -> None:
        used.append(self)
        await real(self, tokens)

    monkeypatch.setattr(RateLimiter, "acquire", acquire)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(invoice(1))
    own, runs = RateLimiter(), RateLimiter()
    async with Extractor(Invoice, [tier()], limiter=own) as ex:
        with Ledger(tmp_path / "l.sqlite3") as ledger:
            await BatchRunner(ex, ledger, limiter=runs).run([docs])
            assert ex.limiter is own and used == [runs]
            await BatchRunner(ex, ledger, force=True).run([docs])  # none given: the extractor's
            assert used == [runs, own]


def test_the_cli_closes_the_extractor_it_built(tmp_path, monkeypatch):
    """``extractkit extract`` / ``eval`` build the extractor, so they close it (once)."""
    from extractkit.cli import app

    from .fakes import FakeLLMServer

    closed: list[Extractor[Any]] = []
    real = Extractor.aclose

    async def aclose(self: Extractor[Any]) -> None:
        closed.append(self)
        await real(self)

    monkeypatch.setattr(Extractor, "aclose", aclose)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(invoice(1))
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"document": "docs/a.txt", "expected": {"issuer": "Company 1 Ltd"}}) + "\n")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = tmp_path / "extractkit.toml"
        cfg.write_text(f'schema = "tests.conftest:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
                       f'base_url = "{server.base_url}"\nmax_reasks = 0\n')  # fmt: skip
        ledger = ["--ledger", str(tmp_path / "l.sqlite3")]
        result = CliRunner().invoke(app, ["extract", str(docs), "-c", str(cfg), *ledger, "--json"])
        assert result.exit_code == 0, result.output
        assert len(closed) == 1
        result = CliRunner().invoke(app, ["eval", str(gold), "-c", str(cfg), *ledger, "--json"])
        assert result.exit_code == 0, result.output
        assert len(closed) == 2 and closed[0] is not closed[1]


# -- only the chain assigns an extractor's ledger and limiter -----------------------------------


def _assignments_to(attrs: set[str], tree: ast.AST) -> list[tuple[int, str]]:
    """Lines that set ``<x>.ledger`` / ``<x>.limiter`` on anything but ``self`` (an object's own
    attribute), by assignment or ``setattr``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            name = node.args[1] if len(node.args) >= 2 else None
            if isinstance(name, ast.Constant) and name.value in attrs:
                found.append((node.lineno, ast.unparse(node)))
        flat: list[ast.expr] = []
        for t in targets:
            flat.extend(t.elts if isinstance(t, ast.Tuple) else [t])
        for t in flat:
            own = isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
            if isinstance(t, ast.Attribute) and t.attr in attrs and not own:
                found.append((t.lineno, ast.unparse(t)))
    return found


def test_no_code_outside_the_chain_sets_an_extractors_ledger_or_limiter():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_chain.py" and path.parent == PACKAGE:
            continue
        for line, what in _assignments_to({"ledger", "limiter"}, ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert offenders == [], "pass the ledger / limiter in (Extractor(...), aextract_in_run) instead"


def test_the_check_finds_what_it_looks_for():
    code = "extractor.ledger = l\nex.limiter, y = lim, 1\nsetattr(ex, 'ledger', l)\nself.ledger = l\nx.other = 1\n"
    assert [line for line, _ in _assignments_to({"ledger", "limiter"}, ast.parse(code))] == [1, 2, 3]


# -- the protocols ----------------------------------------------------------------------------


class _Recorder:
    """A RecordingLedger that is not a Ledger: keeps what the chain records in memory."""

    def __init__(self) -> None:
        self.runs: dict[str, str] = {}
        self.recorded: list[tuple[str | None, bool]] = []

    def start_run(self, kind: str, config: dict[str, Any] | None = None,
                  config_hash: str | None = None, schema_hash: str | None = None) -> str:  # fmt: skip
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = "running"
        return run_id

    def finish_run(self, run_id: str, status: str, **counts: int) -> None:
        self.runs[run_id] = status

    async def arecord(self, extractor: Any, result: Any, **kwargs: Any) -> str:
        self.recorded.append((kwargs.get("run_id"), result.ok))
        return f"ext{len(self.recorded)}"

    def record_error(self, *, run_id: str | None, path: str, kind: str, message: str, schema_hash: str,
                     config_hash: str, document_sha256: str | None = None) -> str:  # fmt: skip
        return "err"

    def add_document_paths(self, seen: Any) -> None:
        pass

    def find_final(self, document_sha256: str, schema_hash: str, config_hash: str, *,
                   forced_tier: str | None = None) -> Any:  # fmt: skip
        return None


def test_the_ledger_and_the_rate_limiter_satisfy_their_protocols():
    with Ledger(":memory:") as ledger:
        assert isinstance(ledger, RecordingLedger)
    assert isinstance(RateLimiter(), Limiter)
    assert isinstance(_Recorder(), RecordingLedger)

    class NoFinish(_Recorder):
        finish_run = None  # type: ignore[assignment]

    assert not isinstance(NoFinish(), RecordingLedger)
    with pytest.raises(TypeError, match="ledger must be a Ledger, a path or None"):
        Extractor(Invoice, [tier()], ledger=NoFinish())  # type: ignore[arg-type]


def test_any_recording_ledger_is_recorded_into_and_left_open(mock_api):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    recorder = _Recorder()
    with Extractor(Invoice, [tier()], ledger=recorder) as ex:
        result = ex.extract(invoice(1))
        assert result.extraction_id == "ext1"
    assert recorder.recorded == [("run0", True)] and recorder.runs == {"run0": "done"}


MYPY_CHECK = textwrap.dedent(
    """
    from typing import Any

    from extractkit import Extractor, ZeroShot
    from extractkit.batch import Limiter, RateLimiter
    from extractkit.ledger import Ledger, RecordingLedger

    from tests.conftest import Invoice


    class NoPenalty:
        async def acquire(self, tokens: int) -> None: ...


    class NoFinalLookup:
        def start_run(self, kind: str, config: dict[str, Any] | None = None,
                      config_hash: str | None = None, schema_hash: str | None = None) -> str:
            return "run"
        def finish_run(self, run_id: str, status: str, **counts: int) -> None: ...
        async def arecord(self, extractor: Any, result: Any, **kwargs: Any) -> str:
            return "ext"
        def record_error(self, *, run_id: str | None, path: str, kind: str, message: str,
                         schema_hash: str, config_hash: str, document_sha256: str | None = None) -> str:
            return "err"
        def add_document_paths(self, seen: Any) -> None: ...


    fine_ledger: RecordingLedger = Ledger(":memory:")
    fine_limiter: Limiter = RateLimiter()
    tiers = [ZeroShot(model="m")]
    Extractor(Invoice, tiers, ledger=Ledger(":memory:"), limiter=RateLimiter())
    Extractor(Invoice, tiers, limiter=NoPenalty())  # LINE-LIMITER
    Extractor(Invoice, tiers, ledger=NoFinalLookup())  # LINE-LEDGER
    """
)


def test_mypy_refuses_a_limiter_or_a_ledger_missing_a_method(tmp_path):
    api = pytest.importorskip("mypy.api")
    root = PACKAGE.parent
    check = tmp_path / "check_protocols.py"
    check.write_text(MYPY_CHECK)
    out, err, status = api.run([str(check), "--no-error-summary", "--show-error-codes",
                                "--config-file", str(root / "pyproject.toml"),
                                "--cache-dir", str(root / ".mypy_cache")])  # fmt: skip
    lines = MYPY_CHECK.splitlines()
    errors = [x for x in out.splitlines() if ": error:" in x]
    where = {int(x.split(":")[1]) for x in errors}
    assert where == {lines.index(x) + 1 for x in lines if x.endswith(("# LINE-LIMITER", "# LINE-LEDGER"))}, out + err
    notes = [x.split("note:")[-1].strip() for x in out.splitlines() if ": note:" in x]
    assert "penalize" in notes and "find_final" in notes, out  # the missing members are named
    assert status == 1
