"""The TOML config file: the schema, the tiers, the ledger and batch settings.

Everything a tier takes in the library can be set here, except secrets: a tier names the
*environment variable* that holds its key (``api_key_env``), never the key itself, and a header
that carries a secret is read from the environment too (``headers_env``).

.. code-block:: toml

    schema = "invoice_schema:Invoice"      # module:Class, importable from the config's folder

    [ledger]
    path = ".extractkit/ledger.sqlite3"      # relative to this file; --ledger, then $EXTRACTKIT_LEDGER win
    # url = "postgresql://user@host/db"      # or a shared PostgreSQL ledger instead of path
    store_text = true

    [batch]
    concurrency = 8
    rpm = 500
    tpm = 200000
    poll_s = 30                              # --via batch: seconds between polls of open batches

    [documents.storage_options.s3]           # fsspec options for s3:// documents (never credentials)
    endpoint_url = "http://127.0.0.1:9000"   # an S3-compatible store (or $AWS_ENDPOINT_URL)

    [[tiers]]
    kind = "zero_shot"
    model = "gpt-4o-mini"
    max_reasks = 2                           # re-asks after an invalid answer (was: retries)

    [[tiers]]
    kind = "few_shot"
    model = "gpt-4o-mini"
    examples = "invoices.jsonl"              # relative to this file
    k = 3

    [[tiers]]
    kind = "zero_shot"
    model = "my-gateway-model"               # not in the price table: give its price
    base_url = "https://gateway.example/v1"
    price = { input = 0.15, output = 0.6, cached_input = 0.075 }   # USD per 1M tokens
    via = "live"                             # or "batch" (the Batch API); unset: --via decides
    batch_price = { input = 0.075, output = 0.3 }   # its batch requests (default: price x 0.5)
    extra_body = { top_k = 20 }              # merged into every request body
    headers = { "X-Team" = "billing" }       # extra HTTP headers (values never stored)
    headers_env = { "X-Gateway-Key" = "GATEWAY_KEY" }   # header value read from $GATEWAY_KEY
    long_documents = "chunk"                 # longer than the context: chunk and merge, or "refuse"
    chunk_tokens = 8000                      # at most this many tokens a chunk (default: the context)

    [[tiers]]
    kind = "zero_shot"
    model = "gpt-4o"
    input = "text+images"                    # or "images" (pages only) / "text" (the default)
    detail = "high"                          # the page images' detail: "auto" (default), "low", "high"
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


PRICE_SHAPE = "{ input = 0.15, output = 0.6, cached_input = 0.075 }"
PRICE_HELP = f"price is USD per 1M tokens, e.g. price = {PRICE_SHAPE} (cached_input, training optional)"


class PriceConfig(BaseModel):
    """``extractkit.Price`` in TOML: USD per 1M tokens."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)
    training: float | None = Field(None, ge=0)


class TierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["zero_shot", "few_shot", "fine_tuned"]
    model: str
    name: str | None = None
    base_url: str | None = None  # "local": the bundled local model server
    api_key_env: str = "OPENAI_API_KEY"
    # json_object_schema is gone: kept here so the tier can say what to use instead
    mode: Literal["tools", "json_schema", "json", "json_object_schema"] | None = None
    timeout_s: float = Field(60.0, gt=0)
    temperature: float = 0.0
    # re-asks: the same tier asked again after an answer failed validation (the library's
    # max_reasks). Transient failures (429, 5xx, timeouts) are *retried*: a separate policy.
    # The old name `retries` is still read, with a warning (see parse_config).
    max_reasks: int = Field(2, ge=0, le=10)
    max_output_tokens: int | None = Field(None, gt=0)
    context_window: int | None = Field(None, gt=0)
    prompt: str | None = None
    instructions: str | None = None  # inline task instructions (the template's, or appended to it)
    examples: str | None = None
    k: int = Field(3, ge=1)
    select: Literal["similar", "first"] = "similar"
    transport: Literal["httpx", "aiohttp"] | None = None
    price: PriceConfig | None = None  # USD per 1M tokens; overrides the price table
    # how its requests go: "live" or "batch" (the provider's Batch API); unset: the run's --via.
    # Not part of the chain's identity (the same request either way)
    via: Literal["live", "batch"] | None = None
    # USD per 1M tokens for its batch requests; unset: `price` x 0.5 when `price` is set, else the
    # price table's batch price (half the live price)
    batch_price: PriceConfig | None = None
    extra_body: dict[str, Any] | None = None  # merged into the request body (part of the identity)
    headers: dict[str, str] | None = None  # extra HTTP headers; values never stored or printed
    headers_env: dict[str, str] | None = None  # header name -> environment variable with its value
    long_documents: Literal["chunk", "refuse"] = "chunk"  # a document longer than the context
    chunk_tokens: int | None = Field(None, gt=0)  # None: as many as the context holds
    chunk_overlap: int = Field(200, ge=0)
    # what the tier sends: the document's text, its page images (image_url parts, PNG data URLs),
    # or both; detail: the images' detail ("auto", "low", "high"; only with images)
    input: Literal["text", "images", "text+images"] = "text"
    detail: Literal["auto", "low", "high"] = "auto"

    @field_validator("price", "batch_price", mode="wrap")
    @classmethod
    def _price_shape(cls, v: Any, handler: Any) -> PriceConfig | None:
        try:
            return handler(v)  # type: ignore[no-any-return]
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ValueError(f"{problems}. {PRICE_HELP}") from None

    @field_validator("base_url")
    @classmethod
    def _base_url_has_a_scheme(cls, v: str | None) -> str | None:
        from ._tiers import base_url_problem

        problem = base_url_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _local_has_no_batch(self) -> TierConfig:
        from . import local

        if self.via == "batch" and self.base_url is not None and local.is_local(self.base_url):
            raise ValueError('via = "batch" on a tier with base_url = "local": the bundled local model '
                             'has no Batch API; set via = "live" (or leave via out)')  # fmt: skip
        return self

    @field_validator("examples")
    @classmethod
    def _examples_only_for_few_shot(cls, v: str | None, info: Any) -> str | None:
        if v is not None and info.data.get("kind") not in (None, "few_shot"):
            raise ValueError("examples are only used by a few_shot tier")
        return v


class LedgerConfig(BaseModel):
    """``[ledger]``: ``path`` (a SQLite file, relative to the config file) or ``url`` (a shared
    PostgreSQL ledger, ``postgresql://user@host/db``, never resolved against the config's folder);
    not both."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    url: str | None = None
    store_text: bool = True

    @field_validator("url")
    @classmethod
    def _url_is_postgres(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("[ledger] url must be postgresql://user@host/db (a file goes in [ledger] "
                             f"path), got {v.split('@')[-1]!r}")  # fmt: skip
        return v

    @model_validator(mode="after")
    def _path_or_url(self) -> LedgerConfig:
        if self.path is not None and self.url is not None:
            raise ValueError("[ledger] has both path and url: a ledger is one SQLite file or one "
                             "PostgreSQL database; keep one")  # fmt: skip
        return self


class BatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concurrency: int = Field(8, ge=1, le=1024)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    # documents over these are refused before parsing (too_large / text_too_large); see batch._loaders
    max_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_chars: int = Field(2_000_000, ge=1)
    # a response body over this is not read further (response_too_large); see Extractor
    max_response_bytes: int = Field(4 * 1024 * 1024, ge=1)
    # USD: stop starting documents once the run has spent this much (BatchRunner max_cost, --max-cost)
    max_cost: float | None = Field(None, gt=0)
    # seconds between two polls of the provider's open batches (extract --via batch)
    poll_s: float = Field(30.0, ge=0)


# option names that carry credentials: refused in [documents] storage_options (the environment has them)
_SECRET_OPTION = ("secret", "password", "passwd", "session_token", "sas_token", "account_key",
                  "connection_string", "credential")  # fmt: skip


class DocumentsConfig(BaseModel):
    """Documents on object storage (``s3://bucket/prefix``): fsspec options per protocol, e.g.
    ``[documents.storage_options.s3]`` ``endpoint_url = "http://127.0.0.1:9000"``. Credentials are
    refused here: they come from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
    / ``AWS_SESSION_TOKEN`` / ``AWS_PROFILE``), as keys do."""

    model_config = ConfigDict(extra="forbid")
    storage_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for protocol, options in v.items():
            for name in options:
                low = name.lower()
                if low in ("key", "token") or any(s in low for s in _SECRET_OPTION):
                    raise ValueError(
                        f"{protocol}.{name}: credentials are not read from the config file; set them in "
                        "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for s3://)"
                    )
        return v


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_path: str = Field(alias="schema")
    tiers: list[TierConfig] = Field(min_length=1)
    ledger: LedgerConfig = Field(default_factory=lambda: LedgerConfig())
    batch: BatchConfig = Field(default_factory=lambda: BatchConfig())
    documents: DocumentsConfig = Field(default_factory=lambda: DocumentsConfig())
    root: Path = Path(".")  # the config file's folder; relative paths resolve against it
    origin: str = "config"  # the config file's path as given, for messages

    @field_validator("tiers")
    @classmethod
    def _few_shot_has_examples(cls, tiers: list[TierConfig]) -> list[TierConfig]:
        for i, t in enumerate(tiers):
            if t.kind == "few_shot" and not t.examples:
                raise ValueError(f'tiers.{i}: a few_shot tier needs examples = "file.jsonl"')
        return tiers

    def resolve(self, path: str | None) -> str | None:
        if path is None:
            return None
        p = Path(path)
        return str(p if p.is_absolute() else (self.root / p))


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path) -> Config:
    """Read and check a config file; every problem names its key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, root=path.resolve().parent, origin=str(path))


DEPRECATED_TIER_KEYS = {"retries": "max_reasks"}


def _renamed_tier_keys(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Read a tier's old key names (``retries`` -> ``max_reasks``) with a FutureWarning (shown to
    end users by default, unlike DeprecationWarning); both names in one tier is an error."""
    tiers = raw.get("tiers")
    if not isinstance(tiers, list):
        return raw
    renamed = []
    for i, tier in enumerate(tiers):
        if isinstance(tier, dict):
            tier = dict(tier)
            for old, new in DEPRECATED_TIER_KEYS.items():
                if old not in tier:
                    continue
                if new in tier:
                    raise ConfigError(f"{origin}: tiers.{i}: both {old} and {new} are set; {old} is the "
                                      f"old name of {new}: keep only {new}")  # fmt: skip
                warnings.warn(
                    f"{origin}: tiers.{i}.{old} is deprecated, rename it to {new} (re-asks after an "
                    "answer fails validation; transient failures are retried separately)",
                    FutureWarning,
                    stacklevel=4,
                )
                tier[new] = tier.pop(old)
        renamed.append(tier)
    return {**raw, "tiers": renamed}


def parse_config(raw: dict[str, Any], *, root: Path, origin: str = "config") -> Config:
    raw = _renamed_tier_keys(raw, origin)
    try:
        config = Config.model_validate({**raw, "root": root, "origin": origin})
    except ValidationError as exc:
        raise ConfigError(f"{origin}: invalid config:\n{_format_errors(exc)}") from exc
    return config


def import_schema(spec: str, search: list[Path] | None = None) -> type[BaseModel]:
    """'package.module:Model' -> the class. The config folder and cwd are importable."""
    if ":" not in spec:
        raise ConfigError(f"schema: expected 'module:Class', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    for folder in [*(search or []), Path.cwd()]:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"schema: cannot import module {module_name!r}: {exc}") from exc
    schema = getattr(module, attr, None)
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise ConfigError(f"schema: {spec!r} is not a Pydantic model class")
    return schema


def build_tiers(config: Config, *, transport: str | None = None) -> list[Any]:
    from ._tiers import FewShot, FineTuned, ZeroShot

    classes = {"zero_shot": ZeroShot, "few_shot": FewShot, "fine_tuned": FineTuned}
    tiers = []
    for i, t in enumerate(config.tiers):
        kwargs: dict[str, Any] = {
            "model": t.model,
            "base_url": t.base_url,
            "api_key_env": t.api_key_env,
            "mode": t.mode,
            "timeout_s": t.timeout_s,
            "temperature": t.temperature,
            "max_reasks": t.max_reasks,
            "max_output_tokens": t.max_output_tokens,
            "context_window": t.context_window,
            "prompt": config.resolve(t.prompt),
            "transport": t.transport or transport or "httpx",
            "long_documents": t.long_documents,
            "chunk_tokens": t.chunk_tokens,
            "chunk_overlap": t.chunk_overlap,
        }
        if t.name:
            kwargs["name"] = t.name
        if t.instructions is not None:
            kwargs["instructions"] = t.instructions
        if t.price is not None:
            from ._pricing import Price

            kwargs["price"] = Price(**t.price.model_dump())
        if t.batch_price is not None:
            from ._pricing import Price

            kwargs["batch_price"] = Price(**t.batch_price.model_dump())
        if t.via is not None:
            kwargs["via"] = t.via
        if t.input != "text" or t.detail != "auto":  # a text tier with a detail: the tier says why not
            kwargs.update(input=t.input, detail=t.detail)
        if t.extra_body:
            kwargs["extra_body"] = dict(t.extra_body)
        headers = dict(t.headers or {})
        for header, var in (t.headers_env or {}).items():
            value = os.environ.get(var)
            if not value:
                raise ConfigError(
                    f"tiers.{i}.headers_env.{header}: environment variable {var} is not set"
                )
            headers[header] = value
        if headers:
            kwargs["headers"] = headers
        if t.kind == "few_shot":
            kwargs.update(examples=config.resolve(t.examples), k=t.k, select=t.select)
        try:
            tiers.append(classes[t.kind](**kwargs))
        except ConfigError as exc:
            raise ConfigError(f"tiers.{i}: {exc}") from exc
    return tiers
