"""The house's walls: a subpackage's private modules are its own.

Each subpackage of extractkit (batch, ledger, report, evaluate, finetune, local, cli) exposes what
the others may use in its ``__init__``; nothing outside it imports one of its ``_modules`` (or a
private name of it). The top-level private modules (``extractkit/_*.py``: errors, results, tiers,
the chain, ...) are the shared ground floor and may be imported by every subpackage. The rule,
in general: the owner of ``extractkit.a._b.c`` is everything before its first private part
(``extractkit.a``); only modules inside the owner may import it. Tests, benchmarks and examples
are not checked (a test may reach into what it tests).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import extractkit

ROOT = Path(extractkit.__file__).parent

# Imports that cross a wall today and are being fixed on another branch of issue 15 (helper B: the
# report). (file relative to extractkit/, the private module it imports). The merger empties this
# set once B's branch is in: an entry that no longer occurs fails the test, so it cannot linger.
PENDING: set[tuple[str, str]] = set()


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def owner(module: str) -> str | None:
    """The package that owns ``module``: the dotted prefix before its first private part, or None
    when no part is private (a public module, importable by anyone)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            return ".".join(parts[:i])
    return None


def crossings(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source`` (the text of ``module``, dotted) of
    a private module or name owned by a package that ``module`` is not inside."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []

    def check(line: int, target: str) -> None:
        own = owner(target)
        if own is None:
            return
        if module != own and not module.startswith(own + "."):
            found.append((line, target))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("extractkit"):
                continue  # another library's privates are its business (and mypy's)
            if owner(target) is not None:
                check(node.lineno, target)
                continue
            for alias in node.names:  # `from ..report import _html`: a private module by name
                if _private(alias.name):
                    check(node.lineno, f"{target}.{alias.name}")
    return found


def all_crossings() -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        is_package = path.name == "__init__.py"
        parts = ["extractkit", *rel.with_suffix("").parts]
        if is_package:
            parts = parts[:-1]
        for line, target in crossings(path.read_text(encoding="utf-8"), ".".join(parts), is_package):
            out.setdefault((rel.as_posix(), target), []).append(line)
    return out


def test_no_module_imports_a_sibling_packages_private_module():
    found = all_crossings()
    wrong = [f"extractkit/{f}:{line}: imports {target}; import it from {owner(target)} (its __init__)"
             for (f, target), lines in sorted(found.items()) if (f, target) not in PENDING
             for line in lines]  # fmt: skip
    assert not wrong, "private modules imported across a package wall:\n" + "\n".join(wrong)


def test_pending_crossings_still_exist():
    """PENDING is a to-do list, not an allowance: once an entry is fixed, remove it."""
    fixed = sorted(PENDING - set(all_crossings()))
    assert not fixed, f"no longer imported across a wall, remove from PENDING: {fixed}"


@pytest.mark.parametrize(
    ("module", "source", "crosses"),
    [
        # a subpackage reaching into a sibling's private module, every spelling
        ("extractkit.evaluate._gold", "from ..batch._loaders import load", ["extractkit.batch._loaders"]),
        ("extractkit.evaluate._gold", "from ..report import _html", ["extractkit.report._html"]),
        ("extractkit.evaluate._gold", "import extractkit.batch._loaders", ["extractkit.batch._loaders"]),
        ("extractkit.evaluate._gold", "from extractkit.ledger._ledger import scrub", ["extractkit.ledger._ledger"]),
        ("extractkit.cli._report", "def f():\n    from ..report._aggregate import x\n", ["extractkit.report._aggregate"]),
        # a top-level module reaching into a subpackage's private module
        ("extractkit._tiers", "from .local._serve import main", ["extractkit.local._serve"]),
        ("extractkit", "from .batch._loaders import load", ["extractkit.batch._loaders"]),
        # allowed: the public __init__, the top-level private modules, one's own package
        ("extractkit.evaluate._gold", "from ..batch import load, Document", []),
        ("extractkit.evaluate._gold", "from .._results import Outcome\nfrom .. import _redact", []),
        ("extractkit.evaluate._gold", "from ._score import score\nfrom . import _render", []),
        ("extractkit.local", "from ._serve import main", []),  # a package's __init__ (is_package)
        ("extractkit.report._render", "from ._stats import wilson\nfrom .._errors import ConfigError", []),
        ("extractkit.cli._app", "from rich._loop import loop_last", []),  # not ours
    ],
)  # fmt: skip
def test_the_check_sees_every_spelling(module, source, crosses):
    is_package = module in ("extractkit", "extractkit.local")
    assert [t for _, t in crossings(source, module, is_package)] == crosses


@pytest.mark.parametrize(
    ("owner_of", "name"),
    [("Tier", "bind"), ("Result", "tier_attempts"), ("Ledger", "attempts_of"), ("Ledger", "add_secret")],
)
def test_members_without_a_caller_are_gone(owner_of, name):
    """Issue 15 point 6: nothing called these (extractkit/, tests/, benchmarks/, examples/, the
    README). ``BoundTier(tier, schema)`` is how a tier is joined to a schema."""
    from extractkit._tiers import Tier

    classes = {"Tier": Tier, "Result": extractkit.Result, "Ledger": extractkit.Ledger}
    assert not hasattr(classes[owner_of], name)
