"""Outcome categories are decided once, beside ``Outcome`` (``extractkit/_results.py``): which
outcomes are validation failures (re-asked), which are transient (retried, sent again by a rerun),
which name fields in their errors (the report's field table). Everyone else asks those sets,
including the SQL the ledger writes; only a migration spells them out, as history."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest

import extractkit
from extractkit import _results
from extractkit._results import TRANSIENT_OUTCOMES, VALIDATION_OUTCOMES, Attempt, Outcome
from extractkit.ledger import MIGRATIONS, Ledger

ROOT = Path(extractkit.__file__).parent
VALUES = {o.value for o in Outcome}

# where outcome values may be listed: the definition, and the migrations (history: a migration
# classifies the rows of its time and must not change when a category does)
ALLOWED = {"_results.py", "ledger/_migrations.py"}
# lists being removed on another branch of issue 15 (helper B: the report). The merger empties
# this set once B's branch is in; an entry that no longer occurs fails the test.
PENDING: set[str] = set()


def listed_outcomes(source: str) -> list[tuple[int, list[str]]]:
    """(line, values) for every literal that lists two or more outcome values: a tuple, list or
    set of strings, or an SQL list ``('a', 'b')`` inside a string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in VALUES]
            if len(values) >= 2:
                found.append((node.lineno, values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for group in re.findall(r"\(([^()]*)\)", node.value):
                values = [v for v in re.findall(r"'(\w+)'", group) if v in VALUES]
                if len(values) >= 2:
                    found.append((node.lineno, values))
    return found


def all_lists() -> dict[str, list[tuple[int, list[str]]]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        found = listed_outcomes(path.read_text(encoding="utf-8"))
        if found and rel not in ALLOWED:
            out[rel] = found
    return out


def test_no_module_lists_outcome_categories_of_its_own():
    wrong = [f"extractkit/{f}:{line}: {values}" for f, found in all_lists().items() if f not in PENDING
             for line, values in found]  # fmt: skip
    assert not wrong, "outcome categories written out again (use extractkit._results):\n" + "\n".join(wrong)


def test_pending_lists_still_exist():
    fixed = sorted(PENDING - set(all_lists()))
    assert not fixed, f"no longer listing outcomes, remove from PENDING: {fixed}"


@pytest.mark.parametrize(
    ("source", "n"),
    [
        ('X = ("schema_invalid", "ungrounded")', 1),
        ('X = frozenset({"timeout", "api_error", "rate_limited"})', 1),
        ("SQL = \"WHERE a.outcome IN ('rate_limited', 'api_error', 'timeout')\"", 1),
        ("SQL = f\"WHERE a.outcome IN ('invalid_json', 'ungrounded') AND {x}\"", 1),
        ('if outcome == "ungrounded": pass', 0),  # one outcome is not a category
        ('X = ("ok", "failed", "error")', 0),  # statuses, one of them an outcome's name
    ],
)
def test_the_scan_sees_a_list(source, n):
    assert len(listed_outcomes(source)) == n


def test_the_categories():
    """The table of what each outcome is (a change here is a change of behaviour: say so)."""
    assert {o.value for o in VALIDATION_OUTCOMES} == {"invalid_json", "schema_invalid", "ungrounded"}
    assert {o.value for o in TRANSIENT_OUTCOMES} == {"rate_limited", "api_error", "timeout", "connection_error"}
    assert _results.FIELD_ERROR_OUTCOMES < VALIDATION_OUTCOMES
    assert not VALIDATION_OUTCOMES & TRANSIENT_OUTCOMES
    assert "timeout" in TRANSIENT_OUTCOMES  # a value read from the ledger is found as it is


def _expected_follows(previous: Outcome) -> str | None:
    return "reask" if previous in VALIDATION_OUTCOMES else "retry" if previous in TRANSIENT_OUTCOMES else None


@pytest.mark.parametrize("previous", list(Outcome), ids=lambda o: o.value)
def test_the_ledger_records_what_an_attempt_followed_by_the_categories(previous):
    from extractkit.ledger._ledger import _follows

    attempts = [Attempt("zero", "m", 1, previous), Attempt("zero", "m", 2, Outcome.OK),
                Attempt("few", "m", 1, Outcome.OK)]  # fmt: skip
    assert _follows(attempts) == [None, _expected_follows(previous), None]


def test_the_field_failure_sql_lists_exactly_the_category():
    """The SQL the ledger uses for the report's field table reads the attempts whose outcome is in
    _results.FIELD_ERROR_OUTCOMES, and no other: every outcome recorded once (its tier named after it),
    each with an error naming a field; only the category's tiers are counted."""
    from extractkit.ledger._queries import field_failures_sql  # where it was before issue 15

    sql = field_failures_sql("FROM attempts a WHERE 1", per_tier=False)
    listed = re.search(r"a\.outcome IN \(([^)]*)\)", sql)
    assert listed is not None and set(re.findall(r"'(\w+)'", listed.group(1))) == {o.value for o in _results.FIELD_ERROR_OUTCOMES}
    with Ledger(":memory:") as ledger:
        with ledger.transaction() as conn:
            conn.execute("INSERT INTO extractions (id, schema_hash, config_hash, status, created_at)"
                         " VALUES ('e', 's', 'c', 'failed', 0)")  # fmt: skip
            for i, outcome in enumerate(Outcome):
                conn.execute(
                    "INSERT INTO attempts (id, extraction_id, tier, model, number, outcome, errors_json)"
                    " VALUES (?, 'e', ?, 'm', 1, ?, ?)",
                    (f"a{i:02d}", outcome.value, outcome.value, '[{"type": "missing", "loc": ["total"]}]'),
                )
        rows = ledger.query(sql, {"limit": 100, "with_values": 0})
    assert {r["tier"] for r in rows} == {o.value for o in _results.FIELD_ERROR_OUTCOMES}


# the outcomes that existed when migration 0002 shipped (connection_error and response_too_large
# came later, with the live categories)
AT_0002 = [o for o in Outcome if o not in (Outcome.CONNECTION_ERROR, Outcome.RESPONSE_TOO_LARGE)]


def test_migration_0002_classified_the_rows_of_its_time_as_the_categories_do():
    """0002 backfilled ``follows`` with the categories written out (history, see the comment above
    it in _migrations.py). For every outcome of its time it agrees with the live definition. If a
    category changes one day, pin the old classification here: never edit the migration."""
    from extractkit.ledger._migrations import _statements

    conn = sqlite3.connect(":memory:")
    conn.executescript(MIGRATIONS[0][1])  # a ledger as 0001 left it
    conn.execute("INSERT INTO extractions (id, schema_hash, config_hash, status, created_at)"
                 " VALUES ('e', 's', 'c', 'failed', 0)")  # fmt: skip
    for i, outcome in enumerate(AT_0002):
        for number, o in ((1, outcome.value), (2, "ok")):
            conn.execute("INSERT INTO attempts (id, extraction_id, tier, model, number, outcome)"
                         " VALUES (?, 'e', ?, 'm', ?, ?)", (f"a{i:02d}{number}", outcome.value, number, o))  # fmt: skip
    for statement in _statements(MIGRATIONS[1][1]):  # as migrate() applies it
        conn.execute(statement)
    got = dict(conn.execute("SELECT tier, follows FROM attempts WHERE number = 2").fetchall())
    assert got == {o.value: _expected_follows(o) for o in AT_0002}
