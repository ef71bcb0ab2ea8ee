"""Pydantic model -> JSON Schema per mode, schema ids, and the output-token bound."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import re
import typing
from typing import Any

from pydantic import BaseModel

from ._errors import SchemaError

# Keywords that OpenAI strict structured outputs (and fine-tuned models in particular) reject.
# They are removed from the schema *sent*; the Pydantic model still enforces them client-side.
STRICT_UNSUPPORTED_KEYWORDS = frozenset(
    {
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "default",
        "examples",
        "title",
    }
)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_schema(schema: Any) -> type[BaseModel]:
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise SchemaError(f"schema must be a Pydantic model class, got {schema!r}")
    try:
        schema.model_json_schema()
    except Exception as exc:  # pydantic raises several kinds here
        raise SchemaError(f"{schema.__name__} has no JSON Schema: {exc}") from exc
    from instructor.v2.validation import model_declares_async_validators

    if model_declares_async_validators(schema):
        # validation runs synchronously on every answer (as in instructor's own runtime)
        raise SchemaError(
            f"{schema.__name__} (or a model inside it) declares instructor async validators, which "
            "extractkit does not run: "
            "use Pydantic validators (field_validator / model_validator) instead"
        )
    return schema


def json_schema(schema: type[BaseModel]) -> dict[str, Any]:
    return schema.model_json_schema()


def schema_hash(schema: type[BaseModel]) -> str:
    """Id of a schema version: hash of its canonical JSON Schema."""
    return short_hash(canonical_json(json_schema(schema)))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _source(func: Any) -> str:
    func = getattr(func, "__func__", func)  # bound / class methods
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):  # defined at a prompt, or built in
        return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}"


def validation_hash(schema: type[BaseModel]) -> str:
    """Id of what checks an answer beyond its JSON Schema, over nested models: each field's
    metadata (``Grounded()``, constraints, ``AfterValidator``) and the source of every validator.
    Answers that fail them are re-asked with their errors, so they change what a chain returns;
    the JSON Schema (``schema_hash``) does not see them."""
    parts: list[Any] = []
    seen: set[type[BaseModel]] = set()

    def stable(obj: Any) -> str:
        if dataclasses.is_dataclass(obj):  # AfterValidator(func=...) and the like
            values = [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
        else:
            values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
        funcs = [v for v in values if callable(v) and not isinstance(v, type)]
        return _ADDRESS.sub("", repr(obj)) + "".join(_source(f) for f in funcs)

    def annotation(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            model(tp)
            return
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Annotated:
            annotation(args[0])
            parts.extend(stable(m) for m in args[1:])
            return
        for arg in args:
            annotation(arg)

    def model(m: type[BaseModel]) -> None:
        if m in seen:
            return
        seen.add(m)
        for name, info in m.model_fields.items():
            parts.append([m.__name__, name, [stable(x) for x in info.metadata]])
            annotation(info.annotation)
        decorators = m.__pydantic_decorators__
        for kind in ("validators", "field_validators", "root_validators", "model_validators"):
            for name, dec in sorted(getattr(decorators, kind).items()):
                parts.append([m.__name__, kind, name, _source(dec.func)])

    model(schema)
    return short_hash(canonical_json(parts))


# Keywords llama.cpp's server turns into grammar (the bundled local model): kept in the schema
# sent to it, so an answer has the shape validation wants (``format: date`` -> YYYY-MM-DD rather
# than "August 3, 2014", which would be re-asked). An unknown format falls back to any string.
GRAMMAR_KEYWORDS = frozenset({"format"})


def strict_schema(schema: type[BaseModel], *, keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The schema adapted for OpenAI strict mode (json_schema with ``strict: true``).

    Every object gets ``additionalProperties: false`` and lists all its properties as required
    (optional fields already allow null); unsupported keywords are dropped, but those in
    ``keep`` (``GRAMMAR_KEYWORDS`` for a server that honours them).
    """
    raw = copy.deepcopy(json_schema(schema))
    dropped = STRICT_UNSUPPORTED_KEYWORDS - keep

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                if key in ("properties", "$defs"):
                    # their keys are names chosen by the user, not JSON-Schema keywords
                    out[key] = {name: walk(sub) for name, sub in value.items()}
                elif key not in dropped:
                    out[key] = walk(value)
            if out.get("type") == "object" or "properties" in out:
                out.setdefault("properties", {})
                out["required"] = list(out["properties"])
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return walk(raw)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return defs.get(ref.split("/")[-1], {})
    return node


def output_token_budget(schema: type[BaseModel], *, list_items: int = 12) -> int:
    """A bound on output tokens derived from the schema's shape.

    Generous for real answers (about 48 tokens a string, 12 a number, ``list_items`` items a
    list) and small enough to stop a runaway generation long before a 4k context is filled.
    """
    js = json_schema(schema)
    defs = js.get("$defs", {})

    def size(node: dict[str, Any], depth: int = 0) -> int:
        if depth > 8:
            return 16
        node = _resolve(node, defs)
        if "anyOf" in node:
            return max(size(n, depth + 1) for n in node["anyOf"])
        t = node.get("type")
        if t == "object" or "properties" in node:
            props = node.get("properties", {})
            return 2 + sum(4 + size(p, depth + 1) for p in props.values())
        if t == "array":
            return 2 + list_items * (1 + size(node.get("items", {}), depth + 1))
        if t == "string":
            return 12 if node.get("format") in {"date", "date-time"} else 48
        if t in {"number", "integer"}:
            return 12
        return 6

    return max(256, min(4096, int(size(js) * 1.25) + 64))
