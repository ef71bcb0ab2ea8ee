"""The HTML report in a real browser (Debian's headless Chromium): it renders, the charts are there,
nothing is fetched, and model output that looks like markup stays text."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from extractkit import Attempt, Outcome, Result, Usage
from extractkit.ledger import Ledger
from extractkit.report import build_report, report_html

from .ledger_fixtures import chain, populate

DAY = 86_400.0
NOW = 1_800_000_000.0
PAYLOAD_PATH = "docs/<script>document.title='pwned-by-path'</script>.txt"
PAYLOAD_ERROR = "model said: <img src=x onerror=\"document.title='pwned-by-output'\"><b>bold</b>"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("EXTRACTKIT_REQUIRE_CHROMIUM"):
            pytest.fail("EXTRACTKIT_REQUIRE_CHROMIUM is set but chromium is not installed "
                        "(apt-get install chromium)")  # fmt: skip
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def run_chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.fixture
def page(tmp_path, ledger_target) -> Path:
    with Ledger(ledger_target) as ledger:
        ex = chain()
        for day in range(3):  # three days, so there is a trend to draw
            populate(ledger, {"zero": 20, "few": 5, "ft": 4, "none": 1}, extractor=ex,
                     created_at=NOW - (3 - day) * DAY, prefix=f"day{day}")  # fmt: skip
        bad = Result(value=None, tier=None, schema_hash=ex.schema_hash, document_sha256="e" * 64, latency_s=1.0,
                     attempts=[Attempt(tier="zero_shot", model="gpt-4o-mini", number=1, outcome=Outcome.SCHEMA_INVALID,
                                       error=PAYLOAD_ERROR, usage=Usage(10, 5), cost_usd=0.001)])  # fmt: skip
        ledger.record(ex, bad, path=PAYLOAD_PATH)
        html = report_html(build_report(ledger, as_of=NOW))
    out = tmp_path / "report.html"
    out.write_text(html, encoding="utf-8")
    return out


def test_page_is_self_contained_and_escaped(page):
    html = page.read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html and "&lt;img src=x" in html
    # no fetches: no external resources of any kind (the SVG namespace is a name, not a request)
    assert not re.search(r"""<[^>]*\b(src|href)\s*=|url\(|@import|<link|<img|<iframe""", html, re.I)
    assert "Content-Security-Policy" in html


def test_renders_in_headless_chromium_with_charts(page, tmp_path):
    dom = run_chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "<title>extractkit report" in text and "pwned" not in text.split("</title>")[0]
    for chart in ("chart-share", "chart-cost", "chart-trend-success", "chart-trend-cost"):
        assert f'id="{chart}"' in text, chart
    assert len(re.findall(r'<rect class="bar"', text)) >= 8
    assert len(re.findall(r'<polyline class="series"', text)) == 2
    # the payloads are there as text, not as elements
    assert "&lt;script&gt;document.title='pwned-by-path'&lt;/script&gt;" in text
    assert "<img" not in text and "<b>bold</b>" not in text
    shot = tmp_path / "shot.png"
    snap = run_chromium(page, f"--screenshot={shot}", "--window-size=1200,2400")
    assert snap.returncode == 0 and shot.stat().st_size > 20_000, snap.stderr[-2000:]


def test_the_browser_check_would_catch_a_script(tmp_path):
    """The same check on a page that does run a script: it must see it (so the test above can fail)."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><head><title>clean</title></head><body>"
                   f"<p>{PAYLOAD_PATH}</p></body></html>")  # fmt: skip
    dom = run_chromium(bad, "--dump-dom")
    assert "<title>pwned-by-path</title>" in dom.stdout


def test_eval_page_renders_with_charts(mock_api, tmp_path, ledger_target):
    from extractkit.evaluate import build_eval, eval_html, evaluate

    from .test_eval import GOLD, eval_chain, responder

    mock_api.post("/chat/completions").mock(side_effect=responder)
    with Ledger(ledger_target) as ledger:
        s = evaluate(eval_chain(), GOLD[:12], ledger)
        html = eval_html(build_eval(ledger, s.run_id))
    assert "<script" not in html.lower()
    page = tmp_path / "eval.html"
    page.write_text(html, encoding="utf-8")
    dom = run_chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="chart-accuracy"' in dom.stdout and 'id="chart-chain-cost"' in dom.stdout
    assert len(re.findall(r'<rect class="bar"', dom.stdout)) == 14  # 7 chains x 2 charts
    assert "zero_shot -&gt; few_shot -&gt; fine_tuned" in dom.stdout
