"""The prompt versions and the checklist in every format: terminal (default compact, `--by prompt` in
full), JSON (read back), CSV (`--by prompt`, `--by checklist`), HTML in headless Chromium; the CLI's
options and their errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re

from rich.console import Console

from extractkit.ledger import Ledger
from extractkit.report import Report, print_report, read_report, report_html

from .ledger_fixtures import populate
from .test_checklist import DAY, NOW, prompt_hash, versioned
from .test_report import cli
from .test_report_html import run_chromium

PAYLOAD = "<script>document.title='pwned-by-instructions'</script>"


def five(ledger: Ledger) -> list[str]:
    hashes = []
    for i in range(1, 6):
        ex = versioned(i)
        counts = {"zero": 36, "ft": 4} if i == 4 else {"zero": 20, "ft": 20}
        populate(ledger, counts, extractor=ex, created_at=NOW - (6 - i) * DAY, prefix="d")
        hashes.append(prompt_hash(ex))
    return hashes


def text(report: Report, by: str = "tier") -> str:
    console = Console(record=True, width=250, color_system=None)
    print_report(report, console, by=by)
    return console.export_text()


def test_terminal_compact_and_full(tmp_path, ledger_target):
    with Ledger(ledger_target) as ledger:
        hashes = five(ledger)
        r = read_report(ledger, as_of=NOW, target_success=0.98)
    default = text(r)
    assert f"prompt versions: zero_shot 5 (best {hashes[3][:12]} 90%, first 50%); fine_tuned 1" in default
    assert "checklist before fine-tuning, target 98.0%:" in default
    assert "[yes] Prompt formulations tried for the cheap tiers (at least 5)?" in default
    assert "[no] Few-shot examples added?" in default
    assert "no OCR'd documents in scope" in default
    # the conclusion beside the verdict's arithmetic, which is unchanged
    verdict = default.index("Keep fine_tuned:")
    conclusion = default.index("checklist: The checklist is not complete: no few-shot examples were used")
    assert verdict < conclusion
    assert "paired comparisons" not in default  # the compact version
    full = text(r, by="prompt")
    assert "paired comparisons" in full and f"* {hashes[3][:12]}" in full
    assert re.search(rf"{hashes[0][:12]}\s+{hashes[3][:12]}\s+40\s+20\s+36\s+0\s+16\s+3.1e-05", full)
    assert "invalid_json 4, schema_invalid 4" in full
    assert "tiers in chain order" not in full
    only = text(r, by="checklist")
    assert "[yes] Gap between the cheap tiers and the target still significant?" in only
    assert "versions per tier" not in only


def test_json_reads_back_and_csvs(tmp_path, ledger_target):
    from extractkit.report import checklist_csv, versions_csv  # new: here, so the other tests fail alone

    with Ledger(ledger_target) as ledger:
        hashes = five(ledger)
        r = read_report(ledger, as_of=NOW)
    data = json.loads(json.dumps(r.to_dict()))
    assert Report.from_dict(data) == r
    assert data["checklist"]["items"][0]["key"] == "prompts"
    assert [v["version"] for v in data["versions"]["rows"] if v["tier"] == "zero_shot"] == hashes
    body = versions_csv(data)
    versions, _, pairs = body.partition("\n\n")
    rows = list(csv.DictReader(io.StringIO(versions)))
    best = [x for x in rows if x["best"] == "True"]
    assert len(best) == 1 and best[0]["version"] == hashes[3] and best[0]["resolved"] == "36"
    compared = list(csv.DictReader(io.StringIO(pairs)))
    assert len(compared) == 10
    one = next(x for x in compared if (x["a"], x["b"]) == (hashes[0], hashes[3]))
    assert (one["only_a"], one["only_b"], float(one["p_value"])) == ("0", "16", 2 / 2**16)
    items = list(csv.DictReader(io.StringIO(checklist_csv(r))))
    assert [x["key"] for x in items] == ["prompts", "examples", "retrieval", "input", "gap", "conclusion"]
    assert items[-1]["answer"] == "no" and items[-1]["detail"].startswith("The checklist is not complete")


def test_cli_by_prompt_target_and_errors(tmp_path, ledger_target):
    path = ledger_target
    with Ledger(path) as ledger:
        hashes = five(ledger)
    lp = str(path)
    out = cli("report", "--ledger", lp, "--by", "prompt", "--as-of", "2027-01-16", "--csv", str(tmp_path / "v.csv"),
              env={**os.environ, "COLUMNS": "250"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "paired comparisons" in out.stdout and hashes[3][:12] in out.stdout
    assert (tmp_path / "v.csv").read_text().startswith("tier,dimension,version,best,")
    out = cli("report", "--ledger", lp, "--json", "--target-success", "0.98", "--min-version-documents", "41")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["checklist"]["target_success"] == 0.98 and data["checklist"]["min_version_documents"] == 41
    assert data["checklist"]["items"][0]["answer"] == "not_enough_evidence"
    assert {q["name"] for q in data["queries"]} >= {"rollup_attempts", "version_pairs"}
    out = cli("report", "--ledger", lp, "--by", "checklist", "--csv", str(tmp_path / "c.csv"))
    assert out.returncode == 0 and (tmp_path / "c.csv").read_text().startswith("key,question,answer,detail")
    bad = cli("report", "--ledger", lp, "--by", "model")
    assert bad.returncode == 2 and "--by: one of tier, prompt, checklist" in bad.stderr
    bad = cli("report", "--ledger", lp, "--target-success", "1.5")
    assert bad.returncode == 2 and "target_success must be in (0, 1]" in bad.stderr
    bad = cli("report", "--ledger", lp, "--min-version-documents", "0")
    assert bad.returncode == 2 and "min_version_documents must be >= 1" in bad.stderr


def test_html_sections_in_headless_chromium(tmp_path, ledger_target):
    with Ledger(ledger_target) as ledger:
        hashes = five(ledger)
        # a version whose instructions look like markup: its hash is shown, never its text
        populate(ledger, {"zero": 1}, extractor=versioned(PAYLOAD), created_at=NOW - DAY, prefix="x")  # type: ignore[arg-type]
        html = report_html(read_report(ledger, as_of=NOW, target_success=0.98))
    assert "<script" not in html.lower()
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    dom = run_chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    out = dom.stdout
    assert "pwned" not in out.split("</title>")[0]
    for table in ('id="checklist"', 'id="versions"', 'id="version-comparisons"', 'id="checklist-conclusion"'):
        assert table in out, table
    checklist = out[out.index('id="checklist"') : out.index("</table>", out.index('id="checklist"'))]
    assert len(re.findall(r"<tr>", checklist)) == 6  # header + five questions
    assert '<td class="answer yes">yes</td>' in checklist and '<td class="answer no">no</td>' in checklist
    versions = out[out.index('id="versions"') : out.index("</table>", out.index('id="versions"'))]
    assert f"* {hashes[3]}" in versions and versions.count("<tr>") == 1 + 6 + 1  # 6 zero-shot, 1 fine-tuned
    pairs = out[
        out.index('id="version-comparisons"') : out.index("</table>", out.index('id="version-comparisons"'))
    ]
    assert re.search(rf"{hashes[0]}</td><td[^>]*>{hashes[3]}</td>\s*<td>40</td><td>20</td><td>36</td><td>0</td><td>16</td>",
                     pairs)  # fmt: skip
    shot = tmp_path / "shot.png"
    snap = run_chromium(page, f"--screenshot={shot}", "--window-size=1200,3000")
    assert snap.returncode == 0 and shot.stat().st_size > 20_000, snap.stderr[-2000:]
