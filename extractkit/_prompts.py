"""Prompt templates: the shipped defaults (package ``extractkit.prompts``) and user files.

A template is a Jinja2 file with two blocks, ``system`` and ``user``. Variables: ``document``,
``schema_name``, ``schema_description``, ``examples`` (few-shot: items with ``input`` and
``output_json``) and ``instructions`` (the tier's ``instructions=``, "" without).

Instructions: a tier's ``instructions="..."`` is the inline alternative to writing a template.
A template that uses the ``instructions`` variable places them itself; any other (the shipped
ones included) gets them appended to its system message, after a blank line, under
``INSTRUCTIONS_HEADING``. They are part of the template's identity (``PromptTemplate.hash``), so
changing them is a new chain; without instructions a template's hash is the hash of its source,
as before.

Untrusted text goes through a filter: ``as_data`` for text (the document, an example's input),
``as_json_data`` for JSON (an example's output). They neutralise every form of the template's
delimiters inside the text (any case, spacing, attributes, Unicode look-alike or invisible
character; see ``_delimiters``), so the text cannot close its own section or forge another one.
A template's delimiters are the tags written in its own text (``<document>``, ``<example>``,
``<output>`` in the shipped ones), read from the template itself, together with those of the
shipped templates, so a user template is never protected less than the defaults.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.runtime import Context

from ._delimiters import Neutraliser, fold
from ._errors import TemplateError
from ._schema import canonical_json, short_hash

INSTRUCTIONS_HEADING = "Instructions for this task:"
DEFAULT_TEMPLATES = {"zero_shot": "zero_shot.jinja", "few_shot": "few_shot.jinja",
                     "fine_tuned": "fine_tuned.jinja"}  # fmt: skip


# a tag written in a template's own text: <document>, </example>, <output lang="en">
_TAG = re.compile(r"</?\s*([^\W\d][\w.:-]*)(?:\s[^<>]*)?>")
_NEUTRALISER = "extractkit_neutraliser"  # the template global the filters read


def template_tags(template: nodes.Template) -> frozenset[str]:
    """The tags in a template's literal text (not in its expressions), case-folded."""
    return frozenset(
        fold(m[1]) for node in template.find_all(nodes.TemplateData) for m in _TAG.finditer(node.data)
    )


@functools.lru_cache(maxsize=1)
def shipped_delimiters() -> frozenset[str]:
    """The tags the shipped templates use, read from them."""
    tags: frozenset[str] = frozenset()
    for name in DEFAULT_TEMPLATES.values():
        tags |= template_tags(_ENV.parse(_shipped_source(name)))
    return tags


def _neutraliser(context: Context) -> Neutraliser:
    found = context.resolve_or_missing(_NEUTRALISER)
    if isinstance(found, Neutraliser):
        return found
    return Neutraliser(shipped_delimiters())  # a template compiled elsewhere: the shipped tags


@jinja2.pass_context
def as_data(context: Context, text: Any) -> str:
    """Text with every form of the template's delimiters neutralised; otherwise unchanged."""
    return _neutraliser(context).text(str(text))


@jinja2.pass_context
def as_json_data(context: Context, text: Any) -> str:
    """JSON text with every form of the template's delimiters escaped: it decodes the same."""
    return _neutraliser(context).json(str(text))


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
_ENV.filters["as_data"] = as_data
_ENV.filters["as_json_data"] = as_json_data


@dataclass(frozen=True)
class PromptTemplate:
    source: str
    origin: str  # "default:few_shot.jinja" or a file path
    instructions: str | None = None  # a tier's inline instructions (see the module docstring)

    @functools.cached_property
    def hash(self) -> str:
        if self.instructions is None:
            return short_hash(self.source)
        return short_hash(canonical_json({"source": self.source, "instructions": self.instructions}))

    def with_instructions(self, instructions: str | None) -> PromptTemplate:
        """This template with a tier's instructions (None: as it is)."""
        if instructions is None or instructions == self.instructions:
            return self
        if self.instructions is not None:
            raise TemplateError(f"{self.origin}: this template already has other instructions")
        return replace(self, instructions=instructions)

    @functools.cached_property
    def places_instructions(self) -> bool:
        """Whether the template uses the ``instructions`` variable (else they are appended)."""
        return "instructions" in meta.find_undeclared_variables(_ENV.parse(self.source))

    @functools.cached_property
    def _template(self) -> jinja2.Template:
        try:
            parsed = _ENV.parse(self.source)
            delimiters = shipped_delimiters() | template_tags(parsed)
            template = _ENV.from_string(parsed, globals={_NEUTRALISER: Neutraliser(delimiters)})
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
            context = template.new_context({**variables, "instructions": self.instructions or ""})
            system = "".join(template.blocks["system"](context)).strip()
            user = "".join(template.blocks["user"](context)).strip()
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.origin}: {exc}") from exc
        if self.instructions and not self.places_instructions:
            system = f"{system}\n\n{INSTRUCTIONS_HEADING}\n{self.instructions}"
        return system, user


def _shipped_source(name: str) -> str:
    return resources.files("extractkit.prompts").joinpath(name).read_text(encoding="utf-8")


def default_template(kind: str) -> PromptTemplate:
    name = DEFAULT_TEMPLATES[kind]
    return PromptTemplate(source=_shipped_source(name), origin=f"default:{name}")


def load_template(spec: str | Path | PromptTemplate | None, kind: str) -> PromptTemplate:
    """The template, compiled (with its delimiters' tables) here rather than at the first render,
    which may run on the event loop."""
    if spec is None:
        spec = default_template(kind)
    if isinstance(spec, PromptTemplate):
        spec.validate()
        return spec
    path = Path(spec)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read prompt template {path}: {exc.strerror}") from exc
    template = PromptTemplate(source=source, origin=str(path))
    template.validate()
    return template


def check_instructions(instructions: Any, where: str) -> str | None:
    """A tier's ``instructions``: None, or a non-blank string (stripped)."""
    if instructions is None:
        return None
    if not isinstance(instructions, str):
        raise TemplateError(f"{where}: instructions must be a string, got {type(instructions).__name__}")
    text = instructions.strip()
    if not text:
        raise TemplateError(f"{where}: instructions are empty; leave them out or write the task's")
    return text
