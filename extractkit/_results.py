"""Plain data: Outcome, Usage, Attempt, Result. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._redact import redact

if TYPE_CHECKING:
    from ._grounding import Span
    from ._merge import Conflict

T = TypeVar("T")


class Outcome(str, enum.Enum):
    """What one attempt (one HTTP call) ended in."""

    OK = "ok"
    INVALID_JSON = "invalid_json"  # not JSON, or no tool call / no content to parse
    SCHEMA_INVALID = "schema_invalid"  # JSON that fails the Pydantic model (errors attached)
    UNGROUNDED = "ungrounded"  # schema-valid, but a grounded field's value is not in the source
    REFUSAL = "refusal"  # the model refused (OpenAI ``message.refusal``)
    TRUNCATED = "truncated"  # finish_reason == "length": hit the output-token bound
    CONTENT_FILTER = "content_filter"  # finish_reason == "content_filter"
    CONTEXT_OVERFLOW = "context_overflow"  # prompt + output bound exceed the context window
    RATE_LIMITED = "rate_limited"  # HTTP 429 (retried; recorded when it happened)
    API_ERROR = "api_error"  # any other HTTP failure (5xx, a non-JSON 200 body, ...)
    TIMEOUT = "timeout"  # the per-attempt timeout expired
    CONNECTION_ERROR = "connection_error"  # nothing answered: refused, reset, DNS, TLS
    RESPONSE_TOO_LARGE = "response_too_large"  # the response body exceeded the size cap


FAILURE_OUTCOMES: frozenset[Outcome] = frozenset(o for o in Outcome if o is not Outcome.OK)
# the categories, decided once: a re-ask may fix a validation failure; a transient failure may
# pass if the same request is sent again later (a rerun retries documents that ended in one)
VALIDATION_OUTCOMES: frozenset[Outcome] = frozenset(
    {Outcome.INVALID_JSON, Outcome.SCHEMA_INVALID, Outcome.UNGROUNDED}
)
TRANSIENT_OUTCOMES: frozenset[Outcome] = frozenset(
    {Outcome.RATE_LIMITED, Outcome.API_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR}
)
# the validation failures whose errors name fields (a path and the value rejected): what the
# report's per-field failure table counts
FIELD_ERROR_OUTCOMES: frozenset[Outcome] = frozenset({Outcome.SCHEMA_INVALID, Outcome.UNGROUNDED})
# Outcome is a str enum: a value read from the ledger ("timeout") is found in these sets as it is.


@dataclass(frozen=True)
class Usage:
    """Token counts as reported by the provider (prompt tokens include cached ones)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True)
class Attempt:
    """One call to a model, successful or not, as the ledger stores it."""

    tier: str
    model: str
    number: int  # 1-based within the tier, counting re-asks and transient retries
    outcome: Outcome
    error: str | None = None
    errors: list[dict[str, Any]] | None = None  # Pydantic's error list for schema_invalid
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None  # None when the model's price is unknown; never a guessed 0
    latency_s: float = 0.0
    started_at: float = 0.0  # unix time
    finish_reason: str | None = None
    status_code: int | None = None
    prompt_hash: str = ""
    schema_hash: str = ""
    output: str | None = None  # what the model returned (bounded), for debugging
    served_model: str | None = None  # the model the provider says answered (e.g. a dated snapshot)
    fingerprint: str | None = None  # the provider's system_fingerprint, when it sends one
    via: str = "live"  # how the request went: "live" (one HTTP call) or "batch" (a Batch API line)
    live_cost_usd: float | None = None  # batch only: what the same tokens cost live (the saving)
    chunk: int | None = None  # a long document's chunk (from 0) this attempt was on; None: all of it

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def sum_costs(costs: list[float | None]) -> float | None:
    """Sum costs; unknown (None) anywhere makes the total unknown rather than understated."""
    if any(c is None for c in costs):
        return None
    return round(sum(c for c in costs if c is not None), 10)


ERROR_VALUE_CHARS = 60  # a rejected value, as Result.error shows it
ERROR_MESSAGE_CHARS = 120  # Pydantic's message for one field
_NOT_FOUND = " not found in the document"  # the end of the grounding guard's message


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(e: dict[str, Any]) -> str:
    """One validation error as ``Result.error`` names it: the field's path, then what was wrong with
    which value: ``issuer: 'ACME Corp' not found in the document``, ``total: Input should be a valid
    number, unable to parse string as a number (got 'abc')``, ``issuer: missing``. Values are cut to
    ``ERROR_VALUE_CHARS`` (the attempt's error list is redacted when it is recorded)."""
    loc = [str(p) for p in e.get("loc") or ()]
    where = ".".join(loc) or "(root)"
    kind, msg, got = str(e.get("type") or "invalid"), e.get("msg"), e.get("input")
    if kind == "missing":
        return f"{where}: missing"
    if kind == "ungrounded" and isinstance(msg, str) and msg:
        # the message names the field and the value ("date 2014-05-08 not found in the document")
        if loc and msg.startswith(loc[-1] + " "):
            msg = msg[len(loc[-1]) + 1 :]
        if msg.endswith(_NOT_FOUND):
            return f"{where}: {_cut(msg[: -len(_NOT_FOUND)], ERROR_VALUE_CHARS)}{_NOT_FOUND}"
        return f"{where}: {_cut(msg, ERROR_MESSAGE_CHARS)}"
    text = _cut(msg, ERROR_MESSAGE_CHARS) if isinstance(msg, str) and msg else kind
    if isinstance(got, str) and got:
        text += f" (got {_cut(got, ERROR_VALUE_CHARS)})"
    return f"{where}: {text}"


@dataclass(frozen=True)
class Result(Generic[T]):
    """What ``Extractor.extract`` returns for one document."""

    value: T | None
    tier: str | None
    attempts: list[Attempt]
    latency_s: float
    schema_hash: str = ""
    document_sha256: str = ""
    extraction_id: str | None = None  # the ledger's row for this extraction, when one recorded it
    # where each grounded value was found in the document's text, by field path ("total",
    # "items[3].sku"): the spans of ``text[start:end]`` (at most 20 each; see ``_grounding.spans_for``)
    spans: dict[str, list[Span]] = field(default_factory=dict)
    # a long document extracted in chunks: where the chunks gave a field different values
    conflicts: tuple[Conflict, ...] = ()

    @property
    def ok(self) -> bool:
        return self.value is not None

    @property
    def usage(self) -> Usage:
        total = Usage()
        for a in self.attempts:
            total = total + a.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        return sum_costs([a.cost_usd for a in self.attempts])

    @property
    def outcome(self) -> Outcome:
        """OK, or the outcome of the last attempt when every tier failed."""
        if self.ok:
            return Outcome.OK
        return self.attempts[-1].outcome if self.attempts else Outcome.API_ERROR

    @property
    def error(self) -> str | None:
        """A one-line summary of why the extraction failed, or None."""
        if self.ok:
            return None
        if not self.attempts:
            return "no tier was run"
        last = self.attempts[-1]
        head = f"{last.tier}: {last.outcome.value}"
        if last.errors:
            fields = [describe_error(e) for e in last.errors[:6]]
            more = f" (+{len(last.errors) - 6} more)" if len(last.errors) > 6 else ""
            return redact(f"{head}: " + ", ".join(fields) + more)
        if last.error:
            return redact(f"{head}: {last.error.splitlines()[0][:300]}")
        return head
