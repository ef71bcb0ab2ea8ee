"""Config file -> Extractor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._chain import Extractor
from .._config import Config, build_tiers, import_schema


def build(
    config_path: Path | None, schema: str | None = None, *, resolve_keys: bool = True
) -> tuple[Extractor[Any], Config]:
    """``config_path`` None: ./extractkit.toml (see ``_ledger_opt.load_cli_config``).
    ``resolve_keys=False`` for commands that send no extraction request (export, harvest)."""
    from ._ledger_opt import load_cli_config

    cfg = load_cli_config(config_path, required=True)
    assert cfg is not None  # required=True
    from ..batch import set_storage_options

    set_storage_options(cfg.documents.storage_options)  # s3:// documents: [documents] storage_options
    model = import_schema(schema or cfg.schema_path, [cfg.root])
    tiers = build_tiers(cfg, transport="aiohttp")
    for tier in tiers if resolve_keys else []:
        tier.resolve_api_key()  # a missing key fails here, before any request
    extractor: Extractor[Any] = Extractor(model, tiers, max_response_bytes=cfg.batch.max_response_bytes)
    return extractor, cfg
