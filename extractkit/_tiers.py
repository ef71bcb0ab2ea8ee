"""Tiers: ZeroShot, FewShot, FineTuned — their settings and the messages each sends."""

from __future__ import annotations

import enum
import functools
import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from . import _redact, local
from ._delimiters import RENDER_VERSION
from ._errors import ConfigError, DocumentError, TemplateError
from ._examples import Example, ExampleSelector, coerce_examples
from ._pricing import Price, batch_price, discounted
from ._prompts import PromptTemplate, check_instructions, load_template
from ._schema import canonical_json, short_hash
from ._tokens import png_data_url

INPUTS = ("text", "images", "text+images")  # what a tier sends (Tier.input)
DETAILS = ("auto", "low", "high")  # the image_url detail of its page images (Tier.detail)
# what stands in the template's document for a tier that sends page images only
IMAGES_ONLY_NOTE = "(the document is given as {n} page image(s) attached to this message)"


class Mode(str, enum.Enum):
    """How the schema is imposed on the model. Servers differ in what they honour (README, "The
    local model"): json_schema and tools on OpenAI, llama.cpp's llama-server, Ollama, vLLM and
    LM Studio; json on all of them but LM Studio."""

    TOOLS = "tools"  # a forced tool call
    JSON_SCHEMA = "json_schema"  # response_format json_schema, strict (structured outputs)
    JSON = "json"  # response_format json_object, schema described in the prompt


# modes that are gone, and what to use instead
REMOVED_MODES = {
    "json_object_schema": (
        "mode 'json_object_schema' (response_format json_object with a schema) was removed: only "
        "llama-cpp-python's server needed it, and it honours 'tools'; llama.cpp's own server "
        "(llama-server, the bundled local model), Ollama, vLLM and LM Studio honour 'json_schema'"
    ),
}


# Context windows (tokens) of common models; None for unknown ones (no pre-flight check then).
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o-mini": 128_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-3.5-turbo": 16_385,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
}


@dataclass(frozen=True, kw_only=True)
class Tier:
    """Settings shared by every tier. Subclasses choose the default name, prompt and mode."""

    kind: ClassVar[str] = "tier"
    default_mode: ClassVar[Mode] = Mode.TOOLS

    model: str
    name: str = ""
    base_url: str | None = None  # None: OPENAI_BASE_URL or the OpenAI API
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0  # per attempt; always set
    mode: Mode | str | None = None
    temperature: float = 0.0
    max_reasks: int = 2  # re-asks after the first answer when validation fails
    max_output_tokens: int | None = None  # None: derived from the schema
    context_window: int | None = None  # None: from CONTEXT_WINDOWS, else unknown
    prompt: str | Path | PromptTemplate | None = None  # a Jinja2 file; None: shipped default
    # the task's instructions, inline: placed by the template's `instructions` variable, else
    # appended to its system message (see _prompts); part of the prompt's identity
    instructions: str | None = None
    price: Price | None = None  # overrides the price table for this tier
    # how the tier's requests go: "live" (one HTTP call each) or "batch" (the provider's Batch API,
    # in waves); None: the run's choice (--via, WaveRunner(via=)). Not part of the tier's identity:
    # the same request either way, so switching it does not re-extract anything
    via: str | None = None
    # the price of its batch requests; None: ``price`` x BATCH_DISCOUNT when ``price`` is set, else
    # the price table's batch price (``_pricing.batch_price``); not part of the identity either
    batch_price: Price | None = None
    transport: str = "httpx"  # or "aiohttp" (faster with many requests in flight)
    extra_body: Mapping[str, Any] | None = None  # passed through to the request
    # extra HTTP headers on every request (a gateway's routing or auth header): not part of the
    # tier's identity, and their values are registered as secrets (never stored or printed)
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    # a document longer than the context: "chunk" (extracted chunk by chunk, merged: _chunking,
    # _merge) or "refuse" (context_overflow, nothing sent); chunks of at most chunk_tokens tokens
    # (None: as many as the context holds) overlapping by chunk_overlap tokens
    long_documents: str = "chunk"
    chunk_tokens: int | None = None
    chunk_overlap: int = 200
    # what the tier sends: the document's "text", its page "images" (no text: a model that reads
    # the pages itself) or "text+images" (both); page images go as image_url content parts
    # (PNG data URLs) with ``detail`` ("auto", "low", "high"); both are part of the identity
    input: str = "text"
    detail: str = "auto"

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError(f"{type(self).__name__}: model is required")
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        _redact.register(self.api_key)  # never stored, printed or written from here on
        _redact.register_env(self.api_key_env)
        for header, value in (self.headers or {}).items():
            if not isinstance(header, str) or not isinstance(value, str):
                raise ConfigError(f"tier {self.name}: headers must map names to string values")
            _redact.register(value)
        mode = self.mode  # set on the tier: honoured, local or not
        if mode is None:
            mode = local.DEFAULT_MODE if self.is_local else self.default_mode
        if mode in REMOVED_MODES:
            raise ConfigError(f"tier {self.name}: {REMOVED_MODES[str(mode)]}")
        try:
            object.__setattr__(self, "mode", Mode(mode))
        except ValueError:
            valid = ", ".join(m.value for m in Mode)
            raise ConfigError(f"tier {self.name}: mode {mode!r} is not one of {valid}") from None
        if self.max_reasks < 0:
            raise ConfigError(f"tier {self.name}: max_reasks must be >= 0")
        if self.timeout_s <= 0:
            raise ConfigError(f"tier {self.name}: timeout_s must be > 0")
        if self.transport not in ("httpx", "aiohttp"):
            raise ConfigError(f"tier {self.name}: transport must be 'httpx' or 'aiohttp'")
        if self.base_url is not None:
            problem = base_url_problem(self.base_url)
            if problem:
                raise ConfigError(f"tier {self.name}: {problem}")
        instructions = check_instructions(self.instructions, f"tier {self.name}")
        object.__setattr__(self, "instructions", instructions)
        template = load_template(self.prompt, self.kind)
        try:
            object.__setattr__(self, "prompt", template.with_instructions(instructions))
        except TemplateError as exc:
            raise TemplateError(f"tier {self.name}: {exc}") from None
        if self.via not in (None, "live", "batch"):
            raise ConfigError(f'tier {self.name}: via must be "live" or "batch", got {self.via!r}')
        if self.is_local and self.via == "batch":
            raise ConfigError(f'tier {self.name}: the bundled local model has no Batch API: set via = "live" '
                              "on it (or leave via out)")  # fmt: skip
        if self.is_local and self.price is None:
            object.__setattr__(self, "price", local.PRICE)
        if self.long_documents not in ("chunk", "refuse"):
            raise ConfigError(f'tier {self.name}: long_documents must be "chunk" or "refuse", '
                              f"got {self.long_documents!r}")  # fmt: skip
        if (self.chunk_tokens is not None and self.chunk_tokens <= 0) or self.chunk_overlap < 0:
            raise ConfigError(f"tier {self.name}: chunk_tokens must be > 0 and chunk_overlap >= 0")
        if self.input not in INPUTS:
            raise ConfigError(f"tier {self.name}: input must be one of {', '.join(map(repr, INPUTS))}, "
                              f"got {self.input!r}")  # fmt: skip
        if self.detail not in DETAILS:
            raise ConfigError(f"tier {self.name}: detail must be one of {', '.join(map(repr, DETAILS))}, "
                              f"got {self.detail!r}")  # fmt: skip
        if self.detail != "auto" and not self.sends_images:
            raise ConfigError(f'tier {self.name}: detail = {self.detail!r} applies to page images, and this '
                              'tier sends text only: set input = "images" or "text+images" (or leave detail '
                              "out)")  # fmt: skip

    @property
    def sends_images(self) -> bool:
        """The tier sends page images (``input`` "images" or "text+images")."""
        return self.input != "text"

    def resolved_batch_price(self, prices: Mapping[str, Price] | None = None) -> Price | None:
        """The price of this tier's batch requests: ``batch_price`` when set, else its own ``price``
        at the batch discount when that is set, else the price table's batch price for its model
        (``prices``: the extractor's overrides, ``"batch:<model>"`` keys included); None when
        unknown (a batch attempt's cost is then unknown, never guessed)."""
        if self.batch_price is not None:
            return self.batch_price
        if self.price is not None:
            return discounted(self.price)
        return batch_price(self.model, prices)

    @property
    def is_local(self) -> bool:
        """``base_url="local"``: the bundled local model server (``extractkit.local.is_local``)."""
        return local.is_local(self.base_url)

    @property
    def resolved_mode(self) -> Mode:
        return Mode(self.mode)

    @property
    def template(self) -> PromptTemplate:
        assert isinstance(self.prompt, PromptTemplate)
        return self.prompt

    def resolve_api_key(self) -> str:
        """The key sent: ``api_key``, else the variable named by ``api_key_env``. A tier whose
        endpoint is on this machine (``base_url`` ``"local"``, ``localhost``, ``127.0.0.1``,
        ``[::1]``, or ``OPENAI_BASE_URL`` set to one of those) needs no key: without one it sends
        a placeholder. Any other endpoint without a key raises ``ConfigError``."""
        if self.api_key:
            return self.api_key
        if self.is_local:
            return local.API_KEY
        key = os.environ.get(self.api_key_env)
        if key:
            _redact.register(key)  # the variable may have been set after the tier was made
            return key
        url = self.base_url if self.base_url is not None else os.environ.get("OPENAI_BASE_URL")
        if url is not None and is_loopback(url):
            # a server on this machine (llama.cpp, vLLM, Ollama, ...) usually wants no key, but
            # the openai client refuses to start without one: send a placeholder
            return LOOPBACK_PLACEHOLDER_KEY
        raise ConfigError(
            f"tier {self.name}: no API key. Set the environment variable {self.api_key_env}, "
            f'or pass api_key= to the tier (api_key_env = "..." in a config file).'
        )

    def resolved_context_window(self) -> int | None:
        if self.context_window is not None:
            return self.context_window
        if self.is_local:
            return local.N_CTX
        from ._pricing import base_model

        return CONTEXT_WINDOWS.get(base_model(self.model))

    def describe(self) -> dict[str, Any]:
        """The tier's own settings that change answers; no paths, no secrets.

        A tier bound to a schema adds what only the schema decides (the examples as validated,
        the output bound): ``BoundTier.describe()`` is the tier's identity in ``config_hash``.
        Left out, because they do not change an answer: the API key and ``api_key_env``,
        ``timeout_s``, ``transport``, ``price``, ``batch_price``, ``via`` (live or batch: the same
        request either way), ``headers`` and file paths (the prompt is
        identified by its source, examples by their content). ``max_reasks`` is in: it changes
        the final result.
        """
        return {
            "kind": self.kind,
            "name": self.name,  # the label results and attempts carry (Result.tier)
            "model": self.model,
            "endpoint": endpoint_identity(self.base_url),
            "mode": self.resolved_mode.value,
            "temperature": float(self.temperature),  # 0 and 0.0 are one setting
            "max_reasks": self.max_reasks,
            "prompt_hash": self.template.hash,
            "render": RENDER_VERSION,  # how untrusted text is neutralised inside the template
            "extra_body": dict(self.extra_body) if self.extra_body else None,
            # in prompt_hash already; the text itself is kept with the run's config
            **({"instructions": self.instructions} if self.instructions else {}),
            # only when it sends images: a text tier's identity (and its ledger rows) unchanged
            **({"input": self.input, "detail": self.detail} if self.sends_images else {}),
            **self._describe_extra(),
            **self._describe_long_documents(),
        }

    def _describe_long_documents(self) -> dict[str, Any]:
        # the defaults (chunk, as the context allows, 200 overlap) are left out: a chain's identity
        # from before tiers had these settings stays what it was
        long = {"long_documents": self.long_documents, "chunk_tokens": self.chunk_tokens,
                "chunk_overlap": self.chunk_overlap}  # fmt: skip
        return {} if long == {"long_documents": "chunk", "chunk_tokens": None, "chunk_overlap": 200} else long

    def _describe_extra(self) -> dict[str, Any]:
        return {}

    # -- prompt -----------------------------------------------------------------------------
    def examples_for(self, bound: BoundTier, document: str) -> list[Example]:
        return []


@dataclass(frozen=True, kw_only=True)
class ZeroShot(Tier):
    """Schema and instructions only."""

    kind: ClassVar[str] = "zero_shot"


@dataclass(frozen=True, kw_only=True)
class FewShot(Tier):
    """Adds k solved examples before the document, the most similar ones by default (BM25)."""

    kind: ClassVar[str] = "few_shot"

    examples: str | Path | Iterable[Example | dict[str, Any]] = ()
    k: int = 3
    select: str = "similar"  # or "first"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.examples, (str, Path)):
            return
        object.__setattr__(self, "examples", tuple(self.examples))
        if not self.examples:
            raise ConfigError(f"tier {self.name}: FewShot needs examples (a file or a list)")

    def _describe_extra(self) -> dict[str, Any]:
        # the examples themselves are identified by content once validated (BoundTier.describe)
        return {"k": self.k, "select": self.select}

    def examples_for(self, bound: BoundTier, document: str) -> list[Example]:
        assert bound.selector is not None
        return bound.selector.select(document)


@dataclass(frozen=True, kw_only=True)
class FineTuned(Tier):
    """A fine-tuned model: short prompt, strict json_schema with the schema adapted for it."""

    kind: ClassVar[str] = "fine_tuned"
    default_mode: ClassVar[Mode] = Mode.JSON_SCHEMA


_MISSING = object()

OPENAI_API = "https://api.openai.com/v1"  # the openai client's default base URL


LOOPBACK_PLACEHOLDER_KEY = "no-key"  # sent to a server on this machine when no key is set


def is_loopback(base_url: str) -> bool:
    """``base_url`` is ``"local"`` or an http(s) URL whose host is this machine (``localhost``,
    ``127.0.0.0/8``, ``::1``)."""
    if local.is_local(base_url):
        return True
    try:
        host = (urlsplit(base_url.strip()).hostname or "").lower()
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url_problem(base_url: str) -> str | None:
    """Why ``base_url`` cannot be used (a message naming the value and the fix), or None."""
    if local.is_local(base_url):
        return None
    parts = urlsplit(base_url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return None
    bare = base_url.split("://", 1)[-1].lstrip("/")
    return (
        f"base_url {base_url!r} is not an http(s) URL: write the scheme, e.g. "
        f"'http://{bare}' for a server on your machine or network, 'https://{bare}' for a "
        f"hosted API (or \"local\" for the bundled local model)"
    )


def endpoint_identity(base_url: str | None) -> str:
    """The endpoint a tier sends to, for its identity: a different server may answer the same
    model name differently (a proxy, a compatible server, another deployment), so it is part of
    the chain's identity. ``None`` is resolved as the client resolves it (``OPENAI_BASE_URL``, else
    the OpenAI API). Credentials, query and fragment are dropped (they can hold keys), scheme and
    host are lower-cased, default ports and trailing slashes removed. ``"local"`` stays ``"local"``
    (the bundled model on whatever free port it was given)."""
    url = base_url if base_url is not None else (os.environ.get("OPENAI_BASE_URL") or OPENAI_API)
    if local.is_local(url):
        return url
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port is None or port == default else f"{host}:{port}"
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]" if port is None or port == default else f"[{host}]:{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def examples_hash(examples: Iterable[Example]) -> str:
    """Hash of validated examples in order (the order decides "first" and breaks BM25 ties)."""
    return short_hash(canonical_json([[e.input, e.output] for e in examples]))


class BoundTier:
    """A tier joined to a schema: examples validated and indexed once, prompts rendered per doc."""

    def __init__(self, tier: Tier, schema: type[BaseModel]):
        from ._schema import GRAMMAR_KEYWORDS, output_token_budget, strict_schema, validation_hash

        self.tier = tier
        self.schema = schema
        self.validation_hash = validation_hash(schema)
        self.extra_text: str | None = None  # the tool / schema definition as sent, once known
        self.extra_tokens: int | None = None  # ... and its tokens, once counted
        # instructor's part, decided once per tier: the schema wrapped as its response model (the
        # answer is handed back as the user's own class) and its handlers for this mode, which
        # build the schema-bound request, parse + validate answers and write re-asks
        import instructor
        from instructor.v2 import Provider, mode_registry
        from instructor.v2.core.response_model import prepare_response_model

        self.response_model: type[BaseModel] = prepare_response_model(schema)  # type: ignore[assignment]
        instructor_mode = {
            Mode.TOOLS: instructor.Mode.TOOLS,
            Mode.JSON_SCHEMA: instructor.Mode.JSON_SCHEMA,
            Mode.JSON: instructor.Mode.JSON,
        }[tier.resolved_mode]
        self.handlers = mode_registry.get_handlers(Provider.OPENAI, instructor_mode)
        self._request_extra: tuple[type[BaseModel], dict[str, Any]] | None = None
        self.selector: ExampleSelector | None = None
        self.examples_hash: str | None = None  # of the examples as validated, not of their file
        if isinstance(tier, FewShot):
            examples = coerce_examples(tier.examples, schema)
            self.selector = ExampleSelector(examples, tier.k, tier.select)
            self.examples_hash = examples_hash(examples)
        # decided once per extractor, not per document or attempt
        self.max_tokens = tier.max_output_tokens or output_token_budget(schema)
        self.context_window = tier.resolved_context_window()
        mode = tier.resolved_mode
        self.response_format: dict[str, Any] | None = None  # replaces instructor's, per mode
        if mode is Mode.JSON_SCHEMA:
            self.response_format = {
                "type": "json_schema",
                "json_schema": {
                    "name": schema.__name__,
                    # the local server's grammar honours `format` (dates), which OpenAI rejects
                    "schema": strict_schema(schema, keep=GRAMMAR_KEYWORDS if tier.is_local else frozenset()),
                    "strict": True,
                },
            }

    def describe(self) -> dict[str, Any]:
        """The tier's identity for this schema: its settings (``Tier.describe``) with the output
        bound and context window actually used, and for few-shot the hash of the examples as
        validated (so an edited example changes it, a moved or renamed file does not)."""
        described = {
            **self.tier.describe(),
            "max_tokens": self.max_tokens,
            "context_window": self.context_window,  # decides which documents are refused unsent
            "validation_hash": self.validation_hash,  # Grounded(), validators: what is re-asked
        }
        if self.examples_hash is not None:
            described["examples_hash"] = self.examples_hash
        return described

    def prepare_request(self, kwargs: dict[str, Any]) -> tuple[type[BaseModel], dict[str, Any]]:
        """instructor's request handler for this mode (tools / response_format, schema in the
        prompt). When it leaves the messages as they are (tools, json_schema), what it adds is the
        same for every document: found once, then merged; otherwise it runs for every document."""
        if self._request_extra is None:
            handler = self.handlers.request_handler
            model, prepared = handler(response_model=self.response_model, kwargs=dict(kwargs))
            if any(prepared.get(k, _MISSING) != v for k, v in kwargs.items()):
                return model, prepared  # it rewrote the prompt (json mode) or an argument
            self._request_extra = (model, {k: v for k, v in prepared.items() if k not in kwargs})
        model, extra = self._request_extra
        return model, {**kwargs, "messages": list(kwargs["messages"]), **extra}

    def messages(self, document: str, images: Sequence[bytes] = ()) -> list[dict[str, Any]]:
        """The first request's messages. A tier that sends page images (``Tier.input``) sends
        them as ``image_url`` parts after the user message's text; with ``input = "images"``
        the template's document is a note that the pages follow (the instructions and any
        examples stay), with ``"text+images"`` the document's text as usual. Without images a
        "text+images" tier sends the text alone; an "images" tier refuses (the chain checks)."""
        tier = self.tier
        if tier.input == "images" and not images:  # never its text instead, silently
            raise DocumentError(f'tier {tier.name} sends page images only (input = "images") and this '
                                "document has none", kind="no_images")  # fmt: skip
        doc = (self.schema.__doc__ or "").strip()
        shown = document
        if images and tier.input == "images":
            shown = IMAGES_ONLY_NOTE.format(n=len(images))
        system, user = tier.template.render(
            document=shown,
            schema_name=self.schema.__name__,
            schema_description=doc,
            examples=tier.examples_for(self, document),
        )
        if not (images and tier.sends_images):
            return [{"role": "system", "content": system}, {"role": "user", "content": user}]
        parts: list[dict[str, Any]] = [{"type": "text", "text": user}]
        for png in images:
            image = {"url": png_data_url(png), "detail": tier.detail}
            parts.append({"type": "image_url", "image_url": image})
        return [{"role": "system", "content": system}, {"role": "user", "content": parts}]

    @functools.cached_property
    def has_grounded(self) -> bool:
        """The schema has a ``Grounded()`` field (values checked against the document's text)."""
        from ._grounding import check_grounded

        def walk(node: Any) -> bool:
            if isinstance(node, dict):
                if node.get("function") is check_grounded:
                    return True
                return any(walk(v) for v in node.values())
            if isinstance(node, (list, tuple)):
                return any(walk(v) for v in node)
            return False

        return walk(self.schema.__pydantic_core_schema__)
