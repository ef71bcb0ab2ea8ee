"""The one exception tree of extractkit.

::

    ExtractkitError                    base of everything extractkit raises on purpose
    ├── ConfigError                    misuse: fix your code or config, retrying will not help
    │   ├── SchemaError                the Pydantic model cannot be used as an extraction schema
    │   ├── ExamplesError              a few-shot examples file is malformed (names file and line)
    │   ├── TemplateError              a prompt template is missing or does not render
    │   ├── MissingDependencyError     an optional extra is not installed (says what to install)
    │   ├── GoldError                  a gold file is malformed (names file and line)
    │   └── TrainingDataError          too few or unusable examples for a fine-tuning export
    ├── DocumentError                  one document cannot be read (empty, binary, no text, ...)
    │   └── NoDocuments                paths that hold no document to extract (empty folder, ...)
    ├── LedgerError                    the ledger database cannot be opened or migrated
    └── RunError                       a run failed although the configuration was valid
        ├── ExtractionFailed           every tier failed; carries the Result and every Attempt
        ├── ProviderUnreachable        N consecutive connection failures: nothing more is sent
        ├── LocalModelError            the local model server did not start or died
        ├── LedgerUnavailable          the shared (PostgreSQL) ledger did not answer for too long
        ├── FinetuneJobError           the provider rejected or failed a fine-tuning job
        └── BatchError                 a Batch API call failed (upload, create, poll, download)
            ├── BatchUnsupported       the provider has no Batch API (no /v1/files): names the URL
            └── BatchFailed            the provider failed a batch (.batch_id, .errors)

Misuse errors are raised before any request is sent. ``ExtractionFailed`` is raised by
``Extractor.extract`` only when the extractor was built with ``raise_on_failure=True``;
by default a failed extraction is returned as a ``Result`` whose ``value`` is ``None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import Attempt, Result


class ExtractkitError(Exception):
    """Base class of every error extractkit raises on purpose."""


class ConfigError(ExtractkitError):
    """Misuse: a setting, schema, examples file or template is wrong."""


class SchemaError(ConfigError):
    """The schema cannot be used for extraction."""


class ExamplesError(ConfigError):
    """A few-shot examples file is malformed."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        super().__init__(message)


class TemplateError(ConfigError):
    """A prompt template cannot be loaded or rendered."""


class MissingDependencyError(ConfigError):
    """An optional dependency is not installed."""


class DocumentError(ExtractkitError):
    """A document cannot be turned into text."""

    def __init__(self, message: str, *, path: str | None = None, kind: str = "unreadable"):
        self.path = path
        self.kind = kind
        super().__init__(message)


class NoDocuments(DocumentError):
    """The paths given hold no document to extract: nothing given, an empty folder, an
    ``include`` glob that matches nothing, or only files of unsupported types. Raised before a run
    is started (the CLI: "no documents matched", exit 2). ``.paths``: the paths as given."""

    def __init__(self, message: str, *, paths: list[str] | None = None):
        self.paths = list(paths or [])
        super().__init__(message, path=self.paths[0] if len(self.paths) == 1 else None, kind="no_documents")


class LedgerError(ExtractkitError):
    """The ledger cannot be opened, migrated or written."""


class RunError(ExtractkitError):
    """A run failed although its configuration was valid."""


class ExtractionFailed(RunError):
    """Every tier failed. ``.result`` is the failed Result, ``.attempts`` every attempt."""

    def __init__(self, message: str, *, result: Result[Any]):
        self.result = result
        super().__init__(message)

    @property
    def attempts(self) -> list[Attempt]:
        return list(self.result.attempts)


class ProviderUnreachable(RunError):
    """The provider did not answer ``failures`` consecutive requests (connection refused, reset,
    DNS, TLS): the chain stops sending instead of burning every document's retries. ``.url`` is
    the base URL that did not answer. ``.result``: the failed ``Result`` of the call that was
    stopped after it had made attempts (recorded in the ledger as such), else None."""

    def __init__(self, message: str, *, url: str, failures: int, result: Result[Any] | None = None):
        self.url = url
        self.failures = failures
        self.result = result
        super().__init__(message)


class ProviderRefused(ProviderUnreachable):
    """The provider refused the credentials (HTTP 401) at ``url``: every later request there would
    be refused too, so the chain stops sending to it at once, as for ``ProviderUnreachable``
    (``.failures`` is 1). Check the API key (``OPENAI_API_KEY`` or the tier's ``api_key_env``)."""


class LocalModelError(RunError):
    """The local model server could not be started or stopped answering."""


class GoldError(ConfigError):
    """A gold file that cannot be used: names the file and line."""


class TrainingDataError(ConfigError):
    """Too few, or unusable, examples for a fine-tuning export or an examples harvest."""


class FinetuneJobError(RunError):
    """The provider rejected or failed a fine-tuning job (upload, create or the job itself)."""


class LedgerUnavailable(RunError):
    """The shared (PostgreSQL) ledger could not be reached for longer than a worker's outage limit
    (``worker --outage-limit``): the worker stops. Nothing extracted is lost: what was recorded is
    in the ledger, and the documents it still held go back to the queue (put back at once if the
    database answered again, else when their lease runs out). ``.seconds``: how long it was away."""

    def __init__(self, message: str, *, seconds: float):
        self.seconds = seconds
        super().__init__(message)


class BatchError(RunError):
    """A Batch API call (upload, create, retrieve, cancel, list, download) failed for good: a
    refused request, an answer that is not what the endpoint returns, or transient failures that
    outlasted the retry policy. ``.url`` is the provider's base URL, ``.status_code`` the HTTP
    status (None: no answer). The message is redacted."""

    def __init__(self, message: str, *, url: str = "", status_code: int | None = None):
        self.url = url
        self.status_code = status_code
        super().__init__(message)


class BatchUnsupported(BatchError):
    """The provider at ``url`` has no Batch API (HTTP 404 on its files endpoint): run the tier
    with ``via = "live"`` instead."""


class BatchFailed(BatchError):
    """The provider failed a batch (status ``failed``: its input was refused in validation).
    ``.batch_id``: the provider's id; ``.errors``: its ``errors.data`` (redacted dicts:
    ``code``, ``message``, ``line``). A batch failed only for a token or rate limit is not an
    error: its lines go to the next wave."""

    def __init__(self, message: str, *, batch_id: str, errors: list[dict[str, Any]], url: str = ""):
        self.batch_id = batch_id
        self.errors = list(errors)
        super().__init__(message, url=url)
