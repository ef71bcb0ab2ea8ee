"""The report as typed, frozen values (issue 15, point 3): ``read_report`` returns a ``Report`` whose
plain data is the ``--json`` output; the renderers take either; ``Verdict`` is built by keyword;
bad report options are errors of the one tree; formatting lives in the renderers' module, not in
the verdict or the numbers; report/ asks ``extractkit.local`` what the local model is."""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console
from typer.testing import CliRunner

import extractkit.report as report_pkg
from extractkit import ConfigError
from extractkit.cli import app
from extractkit.ledger import Ledger
from extractkit.report import (
    DriftTier,
    Economics,
    Report,
    Scope,
    TierStats,
    Verdict,
    build_report,
    marginal_verdict,
    print_report,
    read_report,
    report_csv,
    report_html,
)
from extractkit.report._aggregate import drift

from .ledger_fixtures import populate

NOW = 1_800_000_000.0
DAY = 86_400.0
REPORT_DIR = Path(report_pkg.__file__).parent


@pytest.fixture
def ledger(tmp_path, ledger_target):
    with Ledger(ledger_target) as lg:
        populate(lg, {"zero": 12, "few": 6, "ft": 5, "none": 2}, created_at=NOW - 2 * DAY)
        populate(lg, {"zero": 10, "few": 5, "ft": 4, "none": 1}, created_at=NOW - 12 * DAY, prefix="b")
        yield lg


def test_read_report_returns_typed_frozen_values(ledger):
    r = read_report(ledger, economics=Economics(training_cost=50.0), as_of=NOW)
    assert isinstance(r, Report)
    assert [t.tier for t in r.tiers] == ["zero_shot", "few_shot", "fine_tuned"]
    assert all(isinstance(t, TierStats) for t in r.tiers) and isinstance(r.verdicts[0], Verdict)
    assert r.totals.documents == 45 and r.tiers[0].models == ("gpt-4o-mini",)
    assert r.scope.schema_name is None and r.scope.as_of == NOW
    with pytest.raises(ValidationError):
        r.totals.documents = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        r.tiers[0].reached = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.tiers.append(r.tiers[0])  # type: ignore[attr-defined]


def test_the_plain_data_is_the_json_and_reads_back(ledger):
    """``build_report`` is ``read_report(...).to_dict()``; ``Report.from_dict`` reads it back whole,
    also through JSON (as a file written with --json would be)."""
    r = read_report(ledger, Scope(schema="Invoice"), as_of=NOW)
    data = r.to_dict()
    assert list(data) == ["scope", "economics", "totals", "tiers", "unresolved", "document_errors", "rescue",
                          "verdicts", "verdict", "drift", "served_models", "trend", "sampled", "field_failures",
                          "versions", "checklist", "notes", "queries"]  # fmt: skip
    assert data["scope"]["schema"] == "Invoice" and isinstance(data["tiers"][0]["models"], list)
    again = build_report(ledger, Scope(schema="Invoice"), as_of=NOW)
    strip = re.compile(r"temp\.report_latest_\w+")
    assert strip.sub("T", json.dumps(again)) == strip.sub("T", json.dumps(data))
    assert Report.from_dict(data) == r
    assert Report.from_dict(json.loads(json.dumps(data))) == r
    assert Report.from_dict(r) is r


def test_renderers_take_the_report_or_its_plain_data(ledger):
    r = read_report(ledger, as_of=NOW)

    def terminal(x):
        out = io.StringIO()
        print_report(x, Console(file=out, width=200))
        return out.getvalue()

    assert terminal(r) == terminal(r.to_dict()) and "Keep fine_tuned" in terminal(r)
    assert report_csv(r) == report_csv(r.to_dict())
    page = re.compile(r"generated [^<]*")
    assert page.sub("", report_html(r)) == page.sub("", report_html(r.to_dict()))


def test_drift_items_carry_a_note_or_z_values_never_both():
    sums = {("recent", "a"): {"reached": 30, "resolved": 20, "priced": 30, "cost_usd": 0.3, "cost_sq": 0.003},
            ("baseline", "a"): {"reached": 30, "resolved": 10, "priced": 30, "cost_usd": 0.3, "cost_sq": 0.003},
            ("recent", "b"): {"reached": 3, "resolved": 1, "priced": 0, "cost_usd": 0.0, "cost_sq": 0.0}}  # fmt: skip
    windows = {"recent_since": 1.0, "recent_until": 2.0, "baseline_since": 0.0, "baseline_until": 1.0}
    d = drift(sums, windows, 7, 28)
    a, b = d.tiers
    assert isinstance(a, DriftTier) and a.note is None and a.success_z is not None
    assert set(a.model_dump()) == {"tier", "recent", "baseline", "flags", "success_z", "cost_per_attempt_z"}
    assert set(b.model_dump()) == {"tier", "recent", "baseline", "flags", "note"}
    assert set(b.model_dump()["baseline"]) == {"reached", "resolved", "success_rate", "cost_per_valid_usd"}
    assert d.recent.days == 7 and json.dumps(d.model_dump(mode="json")["recent"]["days"]) == "7"


def test_verdict_is_built_by_keyword_and_frozen():
    with pytest.raises(TypeError):
        Verdict("t", ["a"], "keep", "s", 1, 1)  # type: ignore[misc]
    v = marginal_verdict("ft", ["zero"], n=100, rescued=30, spend=0.3, economics=Economics())
    assert v.after == ("zero",) and v.to_dict()["after"] == ["zero"] and isinstance(v.to_dict()["reasons"], list)
    with pytest.raises(ValidationError):
        v.decision = "drop"  # type: ignore[misc]
    # eval adds its own counts to the plain data; read back, they are left aside
    assert Verdict.model_validate({**v.to_dict(), "wrong_answers_accepted": 2}) == v


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"failure_cost": 0}, "failure_cost must be > 0"),
    ({"training_cost": -1}, "training_cost must be >= 0"),
    ({"min_share": 1.0}, "min_share must be in [0, 1)"),
    ({"min_documents": 0}, "min_documents must be >= 1"),
])  # fmt: skip
def test_bad_report_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Economics(**kwargs)


def test_cli_bad_report_option_exits_2_through_the_one_handler(tmp_path, ledger_target):
    path = ledger_target
    Ledger(path).close()
    res = CliRunner().invoke(app, ["report", "--ledger", str(path), "--failure-cost", "0"])
    assert res.exit_code == 2 and "failure_cost must be > 0" in res.output


def _imports(path: Path) -> list[str]:
    """Every module a file imports, relative ones as written (``._render``, ``..ledger._ledger``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out += [base] + [f"{base}.{a.name}" if base.endswith(".") is False else base + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_numbers_and_verdicts_do_not_import_the_renderers():
    """Formatting lives with the renderers (``_format`` holds the number words they and the verdict
    sentences share); what computes the report never imports the terminal or HTML renderer."""
    for name in ("_verdict.py", "_aggregate.py", "_model.py", "_stats.py", "_format.py"):
        imports = _imports(REPORT_DIR / name)
        assert not [m for m in imports if m.startswith(("._render", "._html", "rich", "jinja2"))], name


def test_report_reaches_no_sibling_private_module():
    """report/, the CLI's report command and eval's renderer import other subpackages by their
    ``__init__`` only (``..ledger``, ``..report``), never a sibling's ``_module``."""
    root = REPORT_DIR.parent
    files = [*REPORT_DIR.glob("*.py"), root / "cli" / "_report.py", root / "evaluate" / "_render.py"]
    for f in files:
        for m in _imports(f):
            parts = m.lstrip(".").split(".")
            if m.startswith("..") and len(parts) > 1 and parts[0] and parts[1].startswith("_"):
                pytest.fail(f"{f.relative_to(root)} imports {m}")


def test_report_asks_extractkit_local_what_the_local_model_is():
    """The local model is named in one place (``extractkit.local``), not as a string in report/."""
    for f in REPORT_DIR.glob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "local"]
        assert not literals, f.name


def test_outcome_categories_are_not_copied_in_report():
    """Which outcomes are validation failures or transient is defined once (extractkit/_results.py):
    no module of report/ keeps a copy of either set (as a tuple, a set or an SQL list)."""
    import importlib

    from extractkit._results import TRANSIENT_OUTCOMES, VALIDATION_OUTCOMES

    categories = [{o.value for o in VALIDATION_OUTCOMES}, {o.value for o in TRANSIENT_OUTCOMES}]
    for f in REPORT_DIR.glob("_*.py"):
        module = importlib.import_module(f"extractkit.report.{f.stem}")
        for name, value in vars(module).items():
            if value is VALIDATION_OUTCOMES or value is TRANSIENT_OUTCOMES or not name.isupper():
                continue
            if isinstance(value, str):
                named = {w for w in re.findall(r"'(\w+)'", value)}
            elif isinstance(value, (tuple, set, frozenset, list)):
                named = {getattr(v, "value", v) for v in value if isinstance(v, str)}
            else:
                continue
            assert not any(c <= named for c in categories), f"{f.name}: {name} copies an outcome category"
