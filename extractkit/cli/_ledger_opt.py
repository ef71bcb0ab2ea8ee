"""The `-c/--config` and `--ledger` options every ledger subcommand takes, and the one place the
CLI decides which config and which ledger file a command uses.

Which ledger, first match wins:

1. ``--ledger PATH_OR_URL``
2. the environment variable ``EXTRACTKIT_LEDGER`` (empty counts as unset)
3. the config's ``[ledger] url`` (a ``postgresql://`` URL, taken as it is) or ``[ledger] path``
   (relative to the config file's folder)
4. ``.extractkit/ledger.sqlite3`` in the current directory

A ``postgresql://user@host/db`` URL anywhere in that list is a shared PostgreSQL ledger; anything
else is a SQLite file.

Which config: ``-c PATH`` (it must exist), else ``./extractkit.toml`` when it exists. A command that
needs one (extract, eval, finetune export, examples harvest) fails without it; one that only reads a
ledger (report, finetune launch/status, eval --run) goes on with the ledger found without it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .._errors import ConfigError, LedgerError

if TYPE_CHECKING:
    from .._config import Config
    from ..ledger import Ledger

DEFAULT_CONFIG = Path("extractkit.toml")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", show_default=False,
        help="TOML config (default: ./extractkit.toml). Its \\[ledger] path is the ledger unless "
        "--ledger or $EXTRACTKIT_LEDGER says otherwise.",
    ),
]  # fmt: skip
LedgerOpt = Annotated[
    str | None,
    typer.Option(
        "--ledger", show_default=False, metavar="PATH|URL",
        help="Ledger: a SQLite file, or postgresql://user@host/db for a shared one. Default: "
        "$EXTRACTKIT_LEDGER, else the config's \\[ledger] url or path, else .extractkit/ledger.sqlite3.",
    ),
]  # fmt: skip


def load_cli_config(config: Path | None, *, required: bool) -> Config | None:
    """``-c PATH`` -> that config (an error if it cannot be read); no ``-c`` -> ``./extractkit.toml``
    if it exists, else an error when ``required``, else None. A deprecated key is printed as a
    one-line ``warning:`` (not a Python warning with a file and line of extractkit's code)."""
    from .._config import load_config
    from ._app import err

    if config is None:
        if not DEFAULT_CONFIG.is_file():
            if required:
                raise ConfigError(f"no config: {DEFAULT_CONFIG} not found here; pass -c/--config PATH "
                                  "(`extractkit init` writes a starter one)")  # fmt: skip
            return None
        config = DEFAULT_CONFIG
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        cfg = load_config(config)
    for w in caught:
        if issubclass(w.category, FutureWarning):
            err.print("[yellow]warning:[/]", end=" ")
            err.print(str(w.message), highlight=False, markup=False, soft_wrap=True)
        else:  # not ours to print: hand it back to the warning filters
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cfg


@dataclass(frozen=True)
class LedgerChoice:
    path: str | Path  # a SQLite file (Path), or a postgresql:// URL (str, as given)
    source: str  # where it came from, for messages

    @property
    def is_url(self) -> bool:
        from ..ledger import is_url

        return is_url(self.path)


def _target(value: str | Path) -> str | Path:
    from ..ledger import is_url

    return value if is_url(value) else Path(value)


def ledger_choice(ledger: str | Path | None, cfg: Config | None) -> LedgerChoice:
    """The ledger a command uses: --ledger, $EXTRACTKIT_LEDGER, [ledger] url or path, the default."""
    from ..ledger import DEFAULT_PATH, ENV_VAR

    if ledger is not None and str(ledger):
        return LedgerChoice(_target(ledger), "--ledger")
    env = os.environ.get(ENV_VAR)
    if env:
        return LedgerChoice(_target(env), f"${ENV_VAR}")
    if cfg is not None and cfg.ledger.url:
        return LedgerChoice(cfg.ledger.url, f"[ledger] url of {cfg.origin}")  # never relative to the file
    if cfg is not None and cfg.ledger.path:
        return LedgerChoice(Path(cfg.resolve(cfg.ledger.path) or ""), f"[ledger] path of {cfg.origin}")
    return LedgerChoice(DEFAULT_PATH, "the default")


def open_ledger(ledger: str | Path | None, cfg: Config | None, *, must_exist: bool = False) -> Ledger:
    """Open the ledger :func:`ledger_choice` picks. ``must_exist``: a command that only reads a
    SQLite file says where it looked instead of creating an empty one (a PostgreSQL database is
    there or the connection fails)."""
    from ..ledger import Ledger

    choice = ledger_choice(ledger, cfg)
    if must_exist and not choice.is_url and not Path(choice.path).exists():
        raise LedgerError(
            f"no ledger at {choice.path} ({choice.source}); run `extractkit extract` first, or point at "
            "one with --ledger, $EXTRACTKIT_LEDGER or -c CONFIG"
        )
    return Ledger(choice.path, store_text=cfg.ledger.store_text if cfg is not None else True)
