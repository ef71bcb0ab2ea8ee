"""The chain's identity (config_hash, tier_hashes) comes from content, never from paths
(issue 12, item 4); a base_url without a scheme is a config error (item 3)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, field_validator

from extractkit import ConfigError, EscalationPolicy, Extractor, FewShot, Grounded, ZeroShot
from extractkit._config import build_tiers, load_config, parse_config
from extractkit._pricing import Price
from extractkit._prompts import default_template
from extractkit._schema import output_token_budget

from .conftest import Invoice

EXAMPLES = [
    {"input": "From: ACME Tools Ltd\nTotal: 1,249.50\n", "output": {"issuer": "ACME Tools Ltd", "total": 1249.5}},
    {"input": "From: Beta GmbH\nTotal: 10.00\n", "output": {"issuer": "Beta GmbH", "total": 10.0}},
    {"input": "Gamma SA\n2021-05-17\nTotal 7.5\n", "output": {"issuer": "Gamma SA", "total": 7.5,
                                                               "date": "2021-05-17"}},
]  # fmt: skip


def write_project(root: Path) -> Path:
    """A project folder: config, examples and a prompt template, with relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    (root / "prompts").mkdir(exist_ok=True)
    (root / "prompts" / "few.jinja").write_text(default_template("few_shot").source + "\n{# mine #}\n")
    cfg = root / "extractkit.toml"
    cfg.write_text(
        'schema = "tests.conftest:Invoice"\n'
        '[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[[tiers]]\nkind = "few_shot"\nmodel = "gpt-4o-mini"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'examples = "examples.jsonl"\nprompt = "prompts/few.jinja"\nk = 2\n'
    )
    return cfg


def chain_from(cfg: Path) -> Extractor[Any]:
    return Extractor(Invoice, build_tiers(load_config(cfg)))


def identity(ex: Extractor[Any]) -> tuple[str, dict[str, str]]:
    return ex.config_hash, ex.tier_hashes


# -- same content, another place: same identity ------------------------------------------------------


def test_a_moved_project_folder_keeps_its_identity(tmp_path):
    first = write_project(tmp_path / "a" / "project")
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(first.parent, moved)
    a, b = chain_from(first), chain_from(moved / "extractkit.toml")
    assert identity(a) == identity(b)
    # the stored description (runs.config_json) holds no path
    for ex in (a, b):
        described = json.dumps(ex.describe())
        assert str(tmp_path) not in described and "examples.jsonl" not in described
        assert "few.jinja" not in described


def test_examples_are_identified_by_their_validated_content(tmp_path):
    cfg = write_project(tmp_path / "p")
    before = chain_from(cfg)
    examples = cfg.parent / "examples.jsonl"
    # the same examples written differently (key order, spacing, a blank line, defaults spelled out)
    rewritten = [{"output": {**e["output"], "date": e["output"].get("date")}, "input": e["input"]} for e in EXAMPLES]
    examples.write_text("\n".join(json.dumps(e, indent=None, separators=(", ", ":  ")) for e in rewritten) + "\n\n")
    assert identity(chain_from(cfg)) == identity(before)
    # inline examples equal to the file's
    inline = Extractor(Invoice, [FewShot(model="m", examples=EXAMPLES, name="few")])
    from_file = Extractor(Invoice, [FewShot(model="m", examples=examples, name="few")])
    assert identity(inline) == identity(from_file)


def test_editing_one_example_changes_the_identity(tmp_path):
    cfg = write_project(tmp_path / "p")
    before = chain_from(cfg)
    edited = [dict(e) for e in EXAMPLES]
    edited[1] = {"input": edited[1]["input"], "output": {"issuer": "Beta GmbH", "total": 10.5}}
    (cfg.parent / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edited))
    after = chain_from(cfg)
    assert after.config_hash != before.config_hash
    assert after.tier_hashes["few_shot"] != before.tier_hashes["few_shot"]
    assert after.tier_hashes["zero_shot"] == before.tier_hashes["zero_shot"]  # its prompt is unchanged
    # so is a change of an example's text, or of their order
    for variant in ([{**EXAMPLES[0], "input": EXAMPLES[0]["input"] + " "}, *EXAMPLES[1:]], EXAMPLES[::-1]):
        (cfg.parent / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in variant))
        assert chain_from(cfg).config_hash != before.config_hash


def test_editing_the_prompt_template_changes_the_identity(tmp_path):
    cfg = write_project(tmp_path / "p")
    before = chain_from(cfg)
    prompt = cfg.parent / "prompts" / "few.jinja"
    prompt.write_text(prompt.read_text() + "{# edited #}\n")
    assert chain_from(cfg).tier_hashes["few_shot"] != before.tier_hashes["few_shot"]


# -- one setting at a time -------------------------------------------------------------------------


class OtherInvoice(BaseModel):
    issuer: str
    total: float
    date: dt.date | None = None
    currency: str | None = None


def _ungrounded() -> type[BaseModel]:
    class Invoice(BaseModel):  # the same JSON Schema as conftest's Invoice, no grounding check
        issuer: str
        total: float
        date: dt.date | None = None

    return Invoice


def _checked() -> type[BaseModel]:
    class Invoice(BaseModel):  # the same JSON Schema, one more validator
        issuer: Annotated[str, Grounded()]
        total: Annotated[float, Grounded()]
        date: dt.date | None = None

        @field_validator("total")
        @classmethod
        def _positive(cls, v: float) -> float:
            if v <= 0:
                raise ValueError("a total is positive")
            return v

    return Invoice


UngroundedInvoice, CheckedInvoice = _ungrounded(), _checked()


def test_validation_is_part_of_the_identity_but_not_of_the_schema_hash():
    """Grounded() and validators decide what is re-asked: not in the JSON Schema, in the identity."""
    chains = [Extractor(s, [ZeroShot(model="m")]) for s in (Invoice, UngroundedInvoice, CheckedInvoice)]
    assert len({c.schema_hash for c in chains}) == 1
    assert len({c.config_hash for c in chains}) == 3
    assert len({c.tier_hashes["zero_shot"] for c in chains}) == 3


@pytest.fixture
def base(tmp_path) -> dict[str, Any]:
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    other_prompt = tmp_path / "other.jinja"
    other_prompt.write_text(default_template("few_shot").source.replace("Extract", "Please extract", 1) + " ")
    return {"model": "gpt-4o-mini", "base_url": "https://api.example.com/v1", "examples": examples, "k": 2,
            "_other_prompt": other_prompt}  # fmt: skip


def few_shot(base: dict[str, Any], **changes: Any) -> Extractor[Any]:
    kwargs = {k: v for k, v in base.items() if not k.startswith("_")}
    kwargs.update(changes)
    schema = kwargs.pop("schema", Invoice)
    policy = kwargs.pop("policy", None)
    return Extractor(schema, [FewShot(**kwargs)], policy=policy)


ANSWER_CHANGING = [
    ("model", lambda b: {"model": "gpt-4o"}),
    ("mode", lambda b: {"mode": "json_schema"}),
    ("temperature", lambda b: {"temperature": 0.7}),
    ("output bound", lambda b: {"max_output_tokens": 999}),
    ("extra_body", lambda b: {"extra_body": {"seed": 7}}),
    ("extra_body value", lambda b: {"extra_body": {"seed": 8}}),
    ("endpoint", lambda b: {"base_url": "https://proxy.example.com/v1"}),
    ("endpoint port", lambda b: {"base_url": "https://api.example.com:8443/v1"}),
    ("endpoint path", lambda b: {"base_url": "https://api.example.com/v2"}),
    ("k", lambda b: {"k": 1}),
    ("select", lambda b: {"select": "first"}),
    ("prompt source", lambda b: {"prompt": b["_other_prompt"]}),
    ("re-asks", lambda b: {"max_reasks": 0}),
    ("context window", lambda b: {"context_window": 2048}),
    ("examples", lambda b: {"examples": EXAMPLES[:2]}),
    ("schema", lambda b: {"schema": OtherInvoice}),
    ("validation", lambda b: {"schema": CheckedInvoice}),
    ("escalation policy", lambda b: {"policy": EscalationPolicy(escalate_on=frozenset({"refusal"}))}),
    ("tier name (the label results carry)", lambda b: {"name": "few"}),
]


@pytest.mark.parametrize(("what", "change"), ANSWER_CHANGING, ids=[w for w, _ in ANSWER_CHANGING])
def test_every_answer_changing_setting_changes_the_identity(base, what, change):
    before, after = few_shot(base), few_shot(base, **change(base))
    assert after.config_hash != before.config_hash, what
    if what != "escalation policy":  # a tier alone knows nothing of the chain's policy
        assert list(after.tier_hashes.values()) != list(before.tier_hashes.values()), what


def _copy(path: Path, tmp: Path) -> Path:
    target = tmp / "copy" / path.name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(path, target)
    return target


NOT_ANSWER_CHANGING = [
    ("api key", lambda b, tmp: {"api_key": "sk-another-key-1234"}),
    ("api_key_env", lambda b, tmp: {"api_key_env": "OTHER_KEY"}),
    ("timeout", lambda b, tmp: {"timeout_s": 5.0}),
    ("transport", lambda b, tmp: {"transport": "aiohttp"}),
    ("price", lambda b, tmp: {"price": Price(1.0, 2.0)}),
    ("examples at another path", lambda b, tmp: {"examples": _copy(b["examples"], tmp)}),
    ("examples path as str", lambda b, tmp: {"examples": str(b["examples"])}),
    ("prompt file equal to the default", lambda b, tmp: {"prompt": _default_prompt_file(tmp)}),
    ("temperature as an int", lambda b, tmp: {"temperature": 0}),
    ("the output bound spelled out", lambda b, tmp: {"max_output_tokens": output_token_budget(Invoice)}),
    ("endpoint written differently", lambda b, tmp: {"base_url": "HTTPS://API.example.com:443/v1/"}),
    ("endpoint credentials", lambda b, tmp: {"base_url": "https://user:pw@api.example.com/v1"}),
]


def _default_prompt_file(tmp: Path) -> Path:
    path = tmp / "default-copy.jinja"
    path.write_text(default_template("few_shot").source)
    return path


@pytest.mark.parametrize(("what", "change"), NOT_ANSWER_CHANGING, ids=[w for w, _ in NOT_ANSWER_CHANGING])
def test_settings_that_do_not_change_answers_keep_the_identity(base, tmp_path, what, change):
    before, after = few_shot(base), few_shot(base, **change(base, tmp_path))
    assert identity(after) == identity(before), what


def test_the_description_holds_no_secret_and_no_path(base, tmp_path):
    ex = few_shot(base, api_key="sk-secret-abcdef123456", base_url="https://u:hunter22@api.example.com/v1?key=k1")
    described = json.dumps(ex.describe())
    for leak in ("sk-secret", "hunter22", "key=k1", str(tmp_path), "OPENAI_API_KEY"):
        assert leak not in described


def test_the_default_endpoint_is_resolved_like_the_client(monkeypatch):
    default = Extractor(Invoice, [ZeroShot(model="m")])
    explicit = Extractor(Invoice, [ZeroShot(model="m", base_url="https://api.openai.com/v1")])
    assert default.config_hash == explicit.config_hash
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    assert Extractor(Invoice, [ZeroShot(model="m")]).config_hash != default.config_hash


# -- a base_url needs a scheme ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "fix"),
    [
        ("localhost:8080/v1", "http://localhost:8080/v1"),
        ("api.openai.com/v1", "https://api.openai.com/v1"),
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("ftp://example.com/v1", "https://example.com/v1"),
    ],
)
def test_a_base_url_without_a_scheme_is_a_config_error(base_url, fix):
    with pytest.raises(ConfigError) as err:
        ZeroShot(model="m", base_url=base_url)
    assert repr(base_url) in str(err.value) and fix in str(err.value)
    raw = {"schema": "tests.conftest:Invoice", "tiers": [{"kind": "zero_shot", "model": "m", "base_url": base_url}]}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, root=Path("."))
    assert "tiers.0.base_url" in str(err.value) and repr(base_url) in str(err.value) and fix in str(err.value)


@pytest.mark.parametrize("base_url", ["local", "http://localhost:8080/v1", "https://api.openai.com/v1"])
def test_urls_with_a_scheme_and_local_are_accepted(base_url):
    assert ZeroShot(model="m", base_url=base_url).base_url == base_url


def test_the_render_version_of_untrusted_text_is_part_of_the_identity(monkeypatch):
    """Neutralising delimiters changes what a document renders as without touching the
    template's source: its version is in every tier's identity."""
    from extractkit import _tiers

    before = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini")]).config_hash
    monkeypatch.setattr(_tiers, "RENDER_VERSION", _tiers.RENDER_VERSION + 1)
    assert Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini")]).config_hash != before
