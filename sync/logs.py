"""Structured logging: structlog events, JSON in production, readable on a terminal; secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

import structlog

REDACTED = "***"
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so that no log line, report or error text can carry it."""
    if value and len(value) >= 4:
        # and the forms error texts quote it in: repr()/bytes escapes ('\\n', '\\xe9'), JSON escapes
        forms = {value, repr(value)[1:-1], str(value.encode("utf-8"))[2:-1], json.dumps(value)[1:-1]}
        with _lock:
            _secrets.update(f for f in forms if len(f) >= 4)


def redact(text: str) -> str:
    if not _secrets or not text:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def _redact_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: _redact_value(v) for k, v in event_dict.items()}


def _redact_rendered(_logger: Any, _name: str, rendered: Any) -> Any:
    return redact(rendered) if isinstance(rendered, str) else rendered


class _CurrentStderr:
    """Whatever `sys.stderr` is at the moment of writing, not the object it was at configure time:
    a stream swapped after start-up (and closed since) must not break every later log call."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Set up structlog once per process. `auto` is console on a TTY and JSON otherwise."""
    stream = stream or _CurrentStderr()
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    """A lazy logger: configuration made later (CLI start-up) still applies to module-level loggers."""
    return structlog.get_logger("feesync", **bound)
