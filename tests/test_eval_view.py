"""Eval explains itself: per document and field, what the gold expected and what each tier answered
(terminal worst first and bounded, --json complete, the HTML page), and charts with titles, axes and
labels that fit (measured in headless Chromium)."""

from __future__ import annotations

import html as html_lib
import json
import re
from typing import Any

from rich.console import Console

from extractkit import Extractor, ZeroShot
from extractkit._redact import REDACTED
from extractkit.evaluate import GoldItem, build_eval, eval_html, evaluate, print_eval
from extractkit.evaluate._render import DOCUMENTS_SHOWN, axis_bars
from extractkit.ledger import Ledger

from .conftest import Invoice
from .fakes import BASE_URL
from .test_batch import cli
from .test_eval import GOLD, eval_chain, responder
from .test_report_html import run_chromium


def run_eval(mock_api: Any, target: str, *, store_text: bool = True, gold: list[GoldItem] = GOLD) -> dict:
    mock_api.post("/chat/completions").mock(side_effect=responder)
    with Ledger(target, store_text=store_text) as ledger:
        s = evaluate(eval_chain(), gold, ledger, concurrency=8)
        return build_eval(ledger, s.run_id)


def test_json_has_every_document_with_expected_and_each_tiers_answer(mock_api, tmp_path, ledger_target):
    ev = run_eval(mock_api, ledger_target)
    view = ev["documents_view"]
    assert len(view) == 40 and {d["gold_id"] for d in view} == {str(i) for i in range(40)}
    # worst first: 36-39 (two tiers failed, fine-tuned wrong on total), then 30-35 (two tiers failed)
    assert [d["gold_id"] for d in view[:4]] == ["36", "37", "38", "39"]
    assert [d["wrong"] for d in view[:11]] == [5] * 4 + [4] * 6 + [2]
    assert all(d["wrong"] == 0 for d in view[20:])
    worst = view[0]
    fields = {f["field"]: f for f in worst["fields"]}
    assert fields["total"]["expected"] == "36.50"
    assert fields["total"]["answers"]["fine_tuned"] == {"value": 7.0, "result": "wrong"}
    assert fields["total"]["answers"]["zero_shot"] == {"value": None, "result": "fn"}
    assert fields["issuer"]["answers"]["fine_tuned"] == {"value": "Firm 36 Ltd", "result": "tp"}
    zero = worst["tiers"]["zero_shot"]
    assert (zero["status"], zero["outcome"], zero["correct"]) == ("failed", "invalid_json", False)
    assert zero["error"].startswith("zero_shot: invalid_json:")
    assert worst["tiers"]["fine_tuned"]["wrong_fields"] == 1 and ev["values_hidden"] is False
    right = next(d for d in view if d["gold_id"] == "0")
    assert {t: x["correct"] for t, x in right["tiers"].items()} == {"zero_shot": True, "few_shot": True,
                                                                    "fine_tuned": True}  # fmt: skip
    assert any(q["name"] == "scores" for q in ev["queries"])


def test_terminal_lists_the_worst_documents_first_and_says_how_many_more(mock_api, tmp_path, ledger_target):
    ev = run_eval(mock_api, ledger_target)
    console = Console(record=True, width=200)
    print_eval(ev, console)
    text = console.export_text()
    assert f"documents with wrong fields, worst first ({DOCUMENTS_SHOWN} of 20)" in text
    table = text.split("documents with wrong fields")[1].split("chain simulation")[0]
    rows = [line.split() for line in table.splitlines() if re.match(r"\s+\d+\s+(issuer|total)\s", line)]
    assert rows[0][:5] == ["36", "issuer", "Firm", "36", "Ltd"]
    assert [r[0] for r in rows if r[1] == "issuer"][:4] == ["36", "37", "38", "39"]
    assert re.search(r"total\s+36\.50\s+failed \(invalid_json\)\s+failed \(invalid_json\)\s+7\.0\s", table)
    assert "and 10 more documents with wrong fields" in text
    assert "20 documents right on every tier and field, not listed" in text
    # why a tier failed: each distinct error once, with the listed documents it ended
    assert re.search(r"zero_shot: invalid_json: .*\[36, 37, 38, 39, 30 and 5 more\]", text)


def test_values_are_hidden_when_the_ledger_keeps_no_text(mock_api, tmp_path, ledger_target):
    ev = run_eval(mock_api, ledger_target, store_text=False, gold=GOLD[36:])
    assert ev["values_hidden"] is True and any("store_text = false" in n for n in ev["notes"])
    [first, *_] = ev["documents_view"]
    total = next(f for f in first["fields"] if f["field"] == "total")
    assert total["expected"] is None and total["answers"]["fine_tuned"] == {"value": None, "result": "wrong"}
    console = Console(record=True, width=200)
    print_eval(ev, console)
    text = console.export_text()
    assert "Firm 36" not in text and "36.50" not in text and re.search(r"total\s+failed.*wrong", text)
    page = eval_html(ev)
    assert "Firm 36" not in page and "36.50" not in page and "keeps no document text" in page


def test_values_pass_the_redaction_boundary_and_stay_text_in_html(mock_api, tmp_path, ledger_target):
    key = "sk-proj-abcdefghijklmnopqrstuvwx"
    gold = [
        GoldItem(
            "k", {"issuer": f"Firm 0 Ltd {key}", "total": "<script>alert(1)</script>"}, text=GOLD[0].text
        )
    ]
    mock_api.post("/chat/completions").mock(side_effect=responder)
    ex = Extractor(Invoice, tiers=[ZeroShot(model="zero-m", base_url=BASE_URL)])
    with Ledger(ledger_target) as ledger:
        ev = build_eval(ledger, evaluate(ex, gold, ledger).run_id)
    [doc] = ev["documents_view"]
    issuer = next(f for f in doc["fields"] if f["field"] == "issuer")
    assert issuer["expected"] == f"Firm 0 Ltd {REDACTED}" and key not in json.dumps(ev)
    page = eval_html(ev)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'id="documents-wrong"' in page and key not in page


def test_cli_json_and_terminal_show_the_documents(tmp_path, ledger_target):
    from .fakes import FakeLLMServer, echo_invoice_responder

    gold = tmp_path / "gold.jsonl"
    rows = [{"id": f"ok-{i}", "document": f"From: Shop {i} GmbH\nTotal: 10{i}.50", "expected": {"total": f"10{i}.5"}}
            for i in range(2)]  # fmt: skip
    rows.append({"id": "bad-total", "document": "From: Shop 9 GmbH\nTotal: 9.00", "expected": {"total": 10}})
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = tmp_path / "extractkit.toml"
        cfg.write_text(f'schema = "tests.conftest:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
                       f'base_url = "{server.base_url}"\n')  # fmt: skip
        args = ("eval", str(gold), "--config", str(cfg), "--ledger", ledger_target)
        proc = cli(*args, "--json", "--html", str(tmp_path / "e.html"))
        assert proc.returncode == 0, proc.stderr
        view = json.loads(proc.stdout)["documents_view"]
        assert [d["gold_id"] for d in view] == ["bad-total", "ok-0", "ok-1"]
        assert view[0]["fields"] == [{"field": "total", "expected": 10,
                                      "answers": {"zero_shot": {"value": 9.0, "result": "wrong"}}}]  # fmt: skip
        shown = cli(*args)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"bad-total\s+total\s+10\s+9\.0", shown.stdout), shown.stdout
    assert "2 documents right on every tier and field" in shown.stdout
    page = (tmp_path / "e.html").read_text()
    assert "bad-total" in page and 'id="documents-right"' in page


# -- charts: titles, axes, labels that fit -----------------------------------------------------


def test_chart_geometry_makes_room_for_the_longest_label():
    long = "a_tier_with_a_long_name -> another_tier_with_a_long_name -> fine_tuned"
    chart = axis_bars("t", "x", "y", [(long, 0.5, "50%"), ("short", None, "unknown")], str, top=1.0)
    assert chart["left"] >= len(long) * 7 and chart["width"] >= chart["left"] + chart["plot_w"]
    assert [b["w"] for b in chart["bars"]] == [chart["plot_w"] // 2, 0]
    assert len(chart["ticks"]) == 5 and chart["ticks"][-1]["x"] == chart["left"] + chart["plot_w"]


MEASURE = """<pre id="measure"></pre><script>
const out = [];
for (const svg of document.querySelectorAll("svg.chart")) {
  const box = svg.getBoundingClientRect();
  const bars = [...svg.querySelectorAll("rect.bar")].map(r => r.getBoundingClientRect().left - box.left);
  for (const t of svg.querySelectorAll("text")) {
    const r = t.getBoundingClientRect();
    out.push({chart: svg.id, cls: t.getAttribute("class") || "", text: t.textContent,
              left: r.left - box.left, right: r.right - box.left, top: r.top - box.top,
              bottom: r.bottom - box.top, width: box.width, height: box.height,
              plot: Math.min(...bars)});
  }
}
document.getElementById("measure").textContent = JSON.stringify(out);
</script>"""


def test_charts_have_titles_axes_and_uncut_labels_in_chromium(mock_api, tmp_path, ledger_target):
    page = eval_html(run_eval(mock_api, ledger_target))
    # the page itself forbids scripts; a copy without that rule carries the measuring script
    probe = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page).replace(
        "</body>", MEASURE + "</body>"
    )
    (tmp_path / "probe.html").write_text(probe, encoding="utf-8")
    dom = run_chromium(tmp_path / "probe.html", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    texts = json.loads(html_lib.unescape(found.group(1)))
    by_chart: dict[str, list[dict]] = {}
    for t in texts:
        by_chart.setdefault(t["chart"], []).append(t)
    assert set(by_chart) == {"chart-accuracy", "chart-chain-cost"}
    for chart, items in by_chart.items():
        classes = [t["cls"] for t in items]
        [title] = [t["text"] for t in items if t["cls"] == "chart-title"]
        assert title in ("Documents fully correct, by chain", "Cost per document, by chain")
        assert "axis-label x-label" in classes and "axis-label y-label" in classes, chart
        assert classes.count("bar-label") == 7 and classes.count("tick") == 5, chart
        for t in items:
            assert t["right"] > t["left"], t  # rendered
            inside = (
                t["left"] >= 0 and t["top"] >= 0 and t["right"] <= t["width"] and t["bottom"] <= t["height"]
            )
            assert inside, f"{chart}: {t['text']!r} is cut: {t}"
            if t["cls"] == "bar-label":  # a chain's name ends before its bar begins
                assert t["right"] <= t["plot"], f"{chart}: {t['text']!r} runs into the bars: {t}"
    labels = [t["text"] for t in by_chart["chart-accuracy"] if t["cls"] == "bar-label"]
    assert "zero_shot -> few_shot -> fine_tuned" in labels
    ticks = [t["text"] for t in by_chart["chart-accuracy"] if t["cls"] == "tick"]
    assert ticks == ["0%", "25%", "50%", "75%", "100%"]


def test_the_eval_page_renders_with_its_scripts_forbidden(mock_api, tmp_path, ledger_target):
    out = tmp_path / "eval.html"
    out.write_text(eval_html(run_eval(mock_api, ledger_target)), encoding="utf-8")
    dom = run_chromium(out, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'class="chart-title"' in dom.stdout and 'id="documents-wrong"' in dom.stdout
    assert "<script" not in out.read_text().lower()
    wrong, right = dom.stdout.split('id="documents-right"')
    assert (wrong.count('class="doc-first"'), right.count('class="doc-first"')) == (20, 20)
    assert "20 document(s) right on every tier and field" in dom.stdout


def test_all_right_says_so_instead_of_an_empty_table(mock_api, tmp_path, ledger_target):
    ev = run_eval(mock_api, ledger_target, gold=GOLD[:1])
    console = Console(record=True, width=200)
    print_eval(ev, console)
    text = console.export_text()
    assert "every tier answered every field of all 1 documents right" in text
    assert "documents with wrong fields" not in text
