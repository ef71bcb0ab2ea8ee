"""Plain data: Outcome, Usage, Attempt, Result. No I/O here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


def sum_costs(costs: list[float | None]) -> float | None:
    """Sum costs; unknown (None) anywhere makes the total unknown rather than understated."""
    if any(c is None for c in costs):
        return None
    return round(sum(c for c in costs if c is not None), 10)


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
            # an ungrounded value is named by its message ("date 2014-05-08 not found in the document")
            fields = [
                e["msg"]
                if e["type"] == "ungrounded" and e.get("msg")
                else f"{'.'.join(e['loc']) or '(root)'} {e['type']}"
                for e in last.errors[:6]
            ]
            more = f" (+{len(last.errors) - 6} more)" if len(last.errors) > 6 else ""
            return f"{head}: " + ", ".join(fields) + more
        if last.error:
            return f"{head}: {last.error.splitlines()[0][:300]}"
        return head

    def tier_attempts(self, tier: str) -> list[Attempt]:
        return [a for a in self.attempts if a.tier == tier]
