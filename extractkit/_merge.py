"""Merging what the chunks of a long document answered, by a policy declared per field.

A document longer than a tier's context is extracted chunk by chunk (``_chunking``), each chunk
with the *relaxed* schema (``relaxed_schema``: every field optional, so a chunk that does not
hold a field answers null), and each chunk's answer grounded against that chunk. ``merge`` then
makes one value of them, field by field:

- a scalar takes the first non-null value in document order (``Merge("first")``, the default) or the value
  most chunks gave (``Merge("most_frequent")``; a tie goes to the earliest). Chunks that gave
  different non-null values are a ``Conflict`` (the field, the values, which chunks gave each),
  recorded whatever the policy chose;
- a list is the chunks' lists concatenated in document order, each item kept once: items are the
  same when their ``Merge(key=...)`` fields are equal (``Merge(key="sku")``, or a tuple of
  names), else when they are equal as a whole. Two items with one key but different contents are
  a ``Conflict`` too (``field[key]``); the first is kept;
- a nested model is merged field by field, by its own fields' policies.

Declare a policy with ``typing.Annotated``::

    class Contract(BaseModel):
        governing_law: Annotated[str, Merge("most_frequent")]
        items: Annotated[list[LineItem], Merge(key="sku")]

The merged value is then validated against the full schema and grounded against the whole
document by the chain (a failure there is a validation outcome, escalated like any other).
Pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from ._errors import SchemaError

Policy = Literal["first", "most_frequent"]
POLICIES: tuple[str, ...] = ("first", "most_frequent")


@dataclass(frozen=True)
class Merge:
    """How a field's values from the chunks of a long document are merged (see ``_merge``):
    ``policy`` for a scalar (``"first"`` non-null value in document order, or the
    ``"most_frequent"``), ``key`` for a list of objects (the field name, or names, that identify
    an item: items with equal keys are one item). Use it in ``typing.Annotated``:
    ``items: Annotated[list[LineItem], Merge(key="sku")]``."""

    policy: Policy = "first"
    key: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SchemaError(f"Merge policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if isinstance(self.key, list):
            object.__setattr__(self, "key", tuple(self.key))

    def describe(self) -> dict[str, Any]:
        key = list(self.key) if isinstance(self.key, tuple) else self.key
        return {"policy": self.policy, "key": key}


DEFAULT = Merge()


@dataclass(frozen=True)
class Conflict:
    """Chunks of one document that gave a field different non-null values: ``field`` (its path,
    e.g. ``effective_date``, ``seller.name`` or ``items[SKU-7]``), the distinct ``values`` in the
    order first seen, ``chunks[i]`` the chunk indexes (from 0) that gave ``values[i]``, and the
    value the merge ``chosen``."""

    field: str
    values: tuple[Any, ...]
    chunks: tuple[tuple[int, ...], ...]
    chosen: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "values": list(self.values), "chunks": [list(c) for c in self.chunks],
                "chosen": self.chosen}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Conflict:
        return cls(d["field"], tuple(d["values"]), tuple(tuple(c) for c in d["chunks"]), d.get("chosen"))


# -- the schema --------------------------------------------------------------------------------------
def policy_of(field: FieldInfo) -> Merge:
    for m in field.metadata:
        if isinstance(m, Merge):
            return m
    return DEFAULT


def policies(schema: type[BaseModel]) -> dict[str, Any]:
    """The policies declared in ``schema`` (nested models included), by field path: part of the
    chain's identity when any is declared (they change a long document's answer)."""
    out: dict[str, Any] = {}

    def walk(model: type[BaseModel], prefix: str, seen: frozenset[type[BaseModel]]) -> None:
        for name, f in model.model_fields.items():
            m = policy_of(f)
            if m != DEFAULT:
                out[prefix + name] = m.describe()
            sub = _model_of(f.annotation)
            if sub is not None and sub not in seen:
                walk(sub, f"{prefix}{name}.", seen | {sub})

    walk(schema, "", frozenset({schema}))
    return out


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _model_of(tp: Any) -> type[BaseModel] | None:
    tp = _strip_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _is_list(tp: Any) -> bool:
    return typing.get_origin(_strip_optional(tp)) in (list, tuple, set, frozenset, Sequence)


@functools.lru_cache(maxsize=64)
def relaxed_schema(schema: type[BaseModel]) -> type[BaseModel]:
    """``schema`` with every field optional (default None), nested models relaxed too (items of a
    list stay as they are: an item found is found whole): what one chunk of a long document is
    asked, so a chunk without a field answers null. Field constraints and ``Grounded()`` stay
    (from ``Annotated``); the model's own validators do not (they run on the merged value)."""
    return _relax(schema, frozenset())


def _relax(model: type[BaseModel], seen: frozenset[type[BaseModel]]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        annotation: Any = f.annotation
        sub = _model_of(annotation)
        if sub is not None and sub not in seen and not _is_list(annotation):
            annotation = _relax(sub, seen | {model})
        for m in f.metadata:  # constraints, Grounded(), Merge(): nested Annotated flattens
            annotation = Annotated[annotation, m]
        info = Field(default=None, description=f.description, alias=f.alias, title=f.title)
        fields[name] = (Optional[annotation], info)  # noqa: UP045
    relaxed = create_model(model.__name__, __doc__=model.__doc__, **fields)  # type: ignore[call-overload]
    relaxed.__module__ = model.__module__
    return relaxed  # type: ignore[no-any-return]


# -- the merge ---------------------------------------------------------------------------------------
def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def merge(
    schema: type[BaseModel], parts: Sequence[tuple[int, dict[str, Any]]]
) -> tuple[dict[str, Any], list[Conflict]]:
    """One value from the chunks' answers: ``parts`` are (chunk index, the chunk's value dumped
    as JSON data), in document order. Returns the merged data (for the full schema to validate)
    and the conflicts found, in field order."""
    conflicts: list[Conflict] = []
    merged = _merge_model(schema, list(parts), "", conflicts, frozenset())
    return merged, conflicts


def _merge_model(
    model: type[BaseModel], parts: list[tuple[int, dict[str, Any]]], prefix: str,
    conflicts: list[Conflict], seen: frozenset[type[BaseModel]],
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        key = f.alias or name
        path = prefix + name
        values = [(i, p[key]) for i, p in parts if isinstance(p, dict) and p.get(key) is not None]
        if not values:
            out[key] = None
            continue
        sub = _model_of(f.annotation)
        if _is_list(f.annotation):
            out[key] = _merge_list(values, policy_of(f), path, conflicts)
        elif sub is not None and sub not in seen and all(isinstance(v, dict) for _, v in values):
            out[key] = _merge_model(sub, values, path + ".", conflicts, seen | {model})
        else:
            out[key] = _merge_scalar(values, policy_of(f), path, conflicts)
    return out


def _merge_scalar(values: list[tuple[int, Any]], merge_: Merge, path: str, conflicts: list[Conflict]) -> Any:
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, v in values:
        groups.setdefault(_canon(v), (v, []))[1].append(i)
    ordered = list(groups.values())  # in the order first seen (document order)
    chosen = ordered[0][0]
    if merge_.policy == "most_frequent":
        chosen = max(ordered, key=lambda g: len(set(g[1])))[0]  # max keeps the first of a tie
    if len(ordered) > 1:
        conflicts.append(Conflict(path, tuple(v for v, _ in ordered),
                                  tuple(tuple(sorted(set(c))) for _, c in ordered), chosen))  # fmt: skip
    return chosen


def _item_key(item: Any, key: str | tuple[str, ...] | None) -> str:
    if key is None or not isinstance(item, dict):
        return _canon(item)
    names = (key,) if isinstance(key, str) else key
    return _canon([item.get(k) for k in names])


def _merge_list(
    values: list[tuple[int, Any]], merge_: Merge, path: str, conflicts: list[Conflict]
) -> list[Any]:
    kept: dict[str, tuple[Any, list[tuple[Any, list[int]]]]] = {}
    for i, items in values:
        for item in items if isinstance(items, list) else [items]:
            k = _item_key(item, merge_.key)
            if k not in kept:
                kept[k] = (item, [(item, [i])])
                continue
            variants = kept[k][1]
            for v, chunks in variants:
                if _canon(v) == _canon(item):
                    chunks.append(i)
                    break
            else:
                variants.append((item, [i]))
    out = []
    for k, (item, variants) in kept.items():
        out.append(item)
        if len(variants) > 1:
            label = ", ".join(str(x) for x in json.loads(k)) if merge_.key is not None else str(len(out) - 1)
            conflicts.append(Conflict(f"{path}[{label}]", tuple(v for v, _ in variants),
                                      tuple(tuple(sorted(set(c))) for _, c in variants), item))  # fmt: skip
    return out
