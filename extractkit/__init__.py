"""extractkit: structured extraction with LLMs — cheap tiers first, every attempt measured."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._chain import EscalationPolicy, Extractor
from ._errors import (
    BatchError,
    BatchFailed,
    BatchUnsupported,
    ConfigError,
    DocumentError,
    ExamplesError,
    ExtractionFailed,
    ExtractkitError,
    FinetuneJobError,
    GoldError,
    LedgerError,
    LocalModelError,
    MissingDependencyError,
    NoDocuments,
    ProviderRefused,
    ProviderUnreachable,
    RunError,
    SchemaError,
    TemplateError,
    TrainingDataError,
)
from ._examples import Example, load_examples
from ._grounding import Grounded, Span
from ._merge import Conflict, Merge
from ._pricing import Price, lookup_price
from ._results import Attempt, Outcome, Result, Usage
from ._retry import RetryPolicy
from ._tiers import FewShot, FineTuned, Mode, Tier, ZeroShot
from .batch import URI, ItemResult
from .ledger import Ledger

try:
    __version__ = _version("extractkit")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Attempt",
    "BatchError",
    "BatchFailed",
    "BatchUnsupported",
    "ConfigError",
    "Conflict",
    "DocumentError",
    "EscalationPolicy",
    "Example",
    "ExamplesError",
    "ExtractionFailed",
    "ExtractkitError",
    "Extractor",
    "FewShot",
    "FineTuned",
    "FinetuneJobError",
    "GoldError",
    "Grounded",
    "ItemResult",
    "Ledger",
    "LedgerError",
    "LocalModelError",
    "Merge",
    "MissingDependencyError",
    "Mode",
    "NoDocuments",
    "Outcome",
    "Price",
    "ProviderRefused",
    "ProviderUnreachable",
    "Result",
    "RetryPolicy",
    "RunError",
    "SchemaError",
    "Span",
    "TemplateError",
    "Tier",
    "TrainingDataError",
    "URI",
    "Usage",
    "ZeroShot",
    "__version__",
    "load_examples",
    "lookup_price",
]
