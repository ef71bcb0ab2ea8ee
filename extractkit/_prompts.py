"""Prompt templates: the shipped defaults (package ``extractkit.prompts``) and user files.

A template is a Jinja2 file with two blocks, ``system`` and ``user``. Variables: ``document``,
``schema_name``, ``schema_description``, ``examples`` (few-shot: items with ``input`` and
``output_json``). The filter ``as_data`` neutralises a closing ``</document>`` tag inside the
text so a document cannot end its own delimiter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ._errors import TemplateError
from ._schema import short_hash

DEFAULT_TEMPLATES = {"zero_shot": "zero_shot.jinja", "few_shot": "few_shot.jinja",
                     "fine_tuned": "fine_tuned.jinja"}  # fmt: skip


def as_data(text: Any) -> str:
    return str(text).replace("</document>", "<\\/document>").replace("<document>", "<\\document>")


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
_ENV.filters["as_data"] = as_data


@dataclass(frozen=True)
class PromptTemplate:
    source: str
    origin: str  # "default:few_shot.jinja" or a file path

    @functools.cached_property
    def hash(self) -> str:
        return short_hash(self.source)

    @functools.cached_property
    def _template(self) -> jinja2.Template:
        try:
            template = _ENV.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{self.origin}: line {exc.lineno}: {exc.message}") from exc
        missing = {"system", "user"} - set(template.blocks)
        if missing:
            raise TemplateError(
                f"{self.origin}: a prompt template needs blocks 'system' and 'user'; "
                f"missing {sorted(missing)}"
            )
        return template

    def validate(self) -> None:
        _ = self._template

    def render(self, **variables: Any) -> tuple[str, str]:
        """(system message, user message)."""
        template = self._template
        try:
            context = template.new_context(variables)
            system = "".join(template.blocks["system"](context)).strip()
            user = "".join(template.blocks["user"](context)).strip()
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.origin}: {exc}") from exc
        return system, user


def default_template(kind: str) -> PromptTemplate:
    name = DEFAULT_TEMPLATES[kind]
    source = resources.files("extractkit.prompts").joinpath(name).read_text(encoding="utf-8")
    return PromptTemplate(source=source, origin=f"default:{name}")


def load_template(spec: str | Path | PromptTemplate | None, kind: str) -> PromptTemplate:
    if spec is None:
        return default_template(kind)
    if isinstance(spec, PromptTemplate):
        return spec
    path = Path(spec)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read prompt template {path}: {exc.strerror}") from exc
    template = PromptTemplate(source=source, origin=str(path))
    template.validate()
    return template
