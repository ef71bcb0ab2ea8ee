"""A ledger is a SQLite file or a postgresql:// URL: other database names are refused, never made
into files, and a work queue at a wrong URL fails at once with the reason (found by a new user's trial)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from extractkit import LedgerError
from extractkit.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("target", ["mysql://x@y/z", "sqlite://ledger.db", "s3://bucket/ledger"])
def test_a_url_of_another_database_is_refused_not_made_a_file(tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LedgerError, match="not a .*:// URL"):
        Ledger(target)
    assert list(tmp_path.iterdir()) == []


def test_a_libpq_keyword_string_is_refused_without_repeating_its_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LedgerError) as err:
        Ledger("host=db.internal dbname=ek user=me password=Sup3rSecretPw")
    assert "postgresql://" in str(err.value) and "Sup3rSecretPw" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_status_at_a_closed_port_fails_at_once_with_the_reason(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), EXTRACTKIT_LEDGER="")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "extractkit", "status", "--ledger",
                           "postgresql://me:Sup3rSecretPw@127.0.0.1:1/x"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    took = time.monotonic() - start
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Sup3rSecretPw" not in done.stderr + done.stdout
    assert "refused" in done.stderr.lower() or "connect" in done.stderr.lower()
    assert "pool initialization incomplete" not in done.stderr
    assert took < 25  # the pool alone waited 30 s before saying only that it timed out
