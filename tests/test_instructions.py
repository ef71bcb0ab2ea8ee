"""Issue 14, section 6: ``instructions="..."`` on a tier, the inline alternative to a template file;
part of the chain's identity; accepted in TOML. No test reaches a network."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from extractkit import ConfigError, Extractor, FewShot, FineTuned, TemplateError, ZeroShot
from extractkit._config import build_tiers, parse_config
from extractkit._prompts import default_template
from extractkit._schema import short_hash

from .conftest import Invoice
from .fakes import BASE_URL, completion

INSTRUCTIONS_HEADING = "Instructions for this task:"  # extractkit._prompts.INSTRUCTIONS_HEADING
RULES = "Dates are written day-first (07/05/2014 is 7 May).\nThe total includes VAT."
DOC = "From: ACME Ltd\nTotal: 5.00\n"
TEMPLATE = """{% block system -%}
Extract {{ schema_name }}.
{%- if instructions %}
House rules: {{ instructions }}
{%- endif %}
{%- endblock %}
{% block user -%}
<document>
{{ document | as_data }}
</document>
{%- endblock %}
"""


def messages(tier) -> list[dict]:  # type: ignore[no-untyped-def]
    return Extractor(Invoice, [tier])._bound[tier.name].messages(DOC)


def test_instructions_are_appended_to_the_default_templates_system_message():
    plain = messages(ZeroShot(model="gpt-4o-mini"))
    told = messages(ZeroShot(model="gpt-4o-mini", instructions=f"  {RULES}\n"))
    assert told[0]["content"] == f"{plain[0]['content']}\n\n{INSTRUCTIONS_HEADING}\n{RULES}"
    assert told[1] == plain[1]  # the user message (the document) is unchanged
    few = FewShot(model="gpt-4o-mini", examples=[{"input": DOC, "output": {"issuer": "ACME Ltd", "total": 5}}],
                  instructions=RULES)  # fmt: skip
    assert messages(few)[0]["content"].endswith(f"{INSTRUCTIONS_HEADING}\n{RULES}")
    assert messages(FineTuned(model="ft:gpt-4o-mini:x", instructions=RULES))[0]["content"].endswith(RULES)


def test_a_template_that_uses_the_instructions_variable_places_them_itself(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(TEMPLATE)
    system = messages(ZeroShot(model="gpt-4o-mini", prompt=path, instructions=RULES))[0]["content"]
    assert system == f"Extract Invoice.\nHouse rules: {RULES}"  # placed once, not appended
    assert messages(ZeroShot(model="gpt-4o-mini", prompt=path))[0]["content"] == "Extract Invoice."


def test_the_instructions_are_part_of_the_prompt_hash_and_the_chains_identity():
    def ids(**kw) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        tier = ZeroShot(model="gpt-4o-mini", **kw)
        return tier.describe()["prompt_hash"], Extractor(Invoice, [tier]).config_hash

    plain, a, a_again, b = ids(), ids(instructions=RULES), ids(instructions=f"\n{RULES}  "), ids(instructions="Other.")
    assert len({plain[0], a[0], b[0]}) == 3 and len({plain[1], a[1], b[1]}) == 3
    assert a == a_again  # surrounding whitespace is not part of them
    # without instructions a tier's identity is what it was: the hash of the template's source
    assert plain[0] == short_hash(default_template("zero_shot").source)
    assert ZeroShot(model="m", instructions=RULES).describe()["instructions"] == RULES
    assert "instructions" not in ZeroShot(model="m").describe()


def test_the_instructions_are_sent_and_recorded_with_the_prompt_hash(mock_api, tmp_path):
    route = mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion({"issuer": "ACME Ltd", "total": 5.0}))
    )
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, instructions=RULES)
    with Extractor(Invoice, [tier], ledger=tmp_path / "l.sqlite3") as ex:
        result = ex.extract(DOC)
    system = json.loads(route.calls[0].request.content)["messages"][0]["content"]
    assert system.endswith(f"{INSTRUCTIONS_HEADING}\n{RULES}")
    assert result.attempts[0].prompt_hash == tier.template.hash != default_template("zero_shot").hash


@pytest.mark.parametrize("bad", ["", "   \n", 42])
def test_empty_or_non_text_instructions_are_refused(bad):
    with pytest.raises(TemplateError, match="tier zero_shot: instructions"):
        ZeroShot(model="gpt-4o-mini", instructions=bad)


def test_instructions_in_toml(tmp_path: Path):
    (tmp_path / "mine.jinja").write_text(TEMPLATE)
    raw = {
        "schema": "tests.conftest:Invoice",
        "tiers": [
            {"kind": "zero_shot", "model": "gpt-4o-mini", "instructions": RULES},
            {"kind": "zero_shot", "name": "own", "model": "gpt-4o", "prompt": "mine.jinja", "instructions": RULES},
            {"kind": "zero_shot", "name": "plain", "model": "gpt-4o"},
        ],
    }
    told, own, plain = build_tiers(parse_config(raw, root=tmp_path))
    assert told.instructions == RULES and told.template.hash == ZeroShot(model="x", instructions=RULES).template.hash
    assert messages(own)[0]["content"] == f"Extract Invoice.\nHouse rules: {RULES}"
    assert plain.instructions is None
    with pytest.raises(ConfigError, match="tiers.0: tier zero_shot: instructions are empty"):
        build_tiers(parse_config({**raw, "tiers": [{"kind": "zero_shot", "model": "m", "instructions": " "}]},
                                 root=tmp_path))  # fmt: skip
