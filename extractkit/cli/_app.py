from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(
    name="extractkit",
    help="Structured extraction with LLMs: zero-shot, then few-shot, then fine-tuned.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the extractkit version."""
    typer.echo(__version__)


def main() -> None:
    app()
