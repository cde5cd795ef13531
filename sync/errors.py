"""One root exception, grouped by what happens next.

    FeesyncError
    ├── ConfigError                 bad configuration: refuse to start, list every problem
    ├── StateError                  the state store cannot be used (schema version, corruption)
    ├── RetryLater                  nothing decided: leave the document pending, try next cycle
    │   ├── TransientError          connect error, timeout, 5xx, 429 (retried with backoff first)
    │   └── DeferredError           Retry-After beyond the cap / retry budget spent
    ├── StopSource                  auth/scope/suspended institute/ERP credentials: stop this
    │                               source, alert, keep the cursor; no per-document conflicts
    ├── ConflictError               this document cannot be written as mapped: a conflict for ops
    │                               (carries `kind`, `detail`, and the LMS answer when there is one)
    └── SourceError                 the ERP answered something we cannot use (bad query, bad body)

Errors keep their inputs as attributes. Messages never contain secrets: the HTTP layers
build them from status codes, paths and server `detail` texts only.
"""

from __future__ import annotations

from typing import Any


class FeesyncError(Exception):
    """Root of every error feesync raises on purpose."""


class ConfigError(FeesyncError):
    """The configuration is invalid; `problems` lists every issue found."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class StateError(FeesyncError):
    """The state store cannot be opened or used."""


class RetryLater(FeesyncError):
    """Nothing was decided; the document stays pending and is retried next cycle."""


class TransientError(RetryLater):
    """A failure that may succeed on retry: connect error, timeout, 5xx, 429."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 response: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.response = response


class DeferredError(RetryLater):
    """Retry budget spent, or the server asked us to wait longer than the cap."""

    def __init__(self, message: str, *, last: BaseException | None = None) -> None:
        super().__init__(message)
        self.last = last


class StopSource(FeesyncError):
    """Credentials rejected, scope missing or institute suspended: stop writing for this source."""

    def __init__(self, message: str, *, status: int | None = None, system: str = "lms") -> None:
        super().__init__(message)
        self.status = status
        self.system = system


class ConflictError(FeesyncError):
    """The document cannot be written as mapped; a person must look at it."""

    def __init__(self, kind: str, detail: str, *, status: int | None = None,
                 response: Any = None, extra: dict[str, Any] | None = None,
                 definitive: bool = True) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.response = response
        self.extra = extra or {}
        # definitive: the LMS answered and created nothing, so a later re-send may use a new
        # key revision (sync-correctness rule 12). False for mapping conflicts (nothing sent).
        self.definitive = definitive


class SourceError(FeesyncError):
    """The ERP answered something the connector cannot use."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
