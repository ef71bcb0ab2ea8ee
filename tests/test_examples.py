"""The README's ten-line example runs, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .fakes import FakeLLMServer, echo_invoice_responder

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_against_a_local_server():
    with FakeLLMServer(echo_invoice_responder) as server:
        env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-fake")
        proc = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "quickstart.py")],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "zero_shot issuer='ACME Tools Ltd' total=1249.5" in proc.stdout
    assert len(server.requests) == 1 and server.requests[0]["model"] == "gpt-4o-mini"


def test_readme_example_is_the_quickstart_file():
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "examples" / "quickstart.py").read_text().strip()
    assert code in readme
