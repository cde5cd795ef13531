"""Wiring: settings -> state store, LMS client, connectors, engine. The CLI and the tests build apps here."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync import connector as connector_registry
from sync.config import Settings, build_connector_settings
from sync.engine import Engine
from sync.errors import ConfigError
from sync.lms import LmsClient, make_limiter
from sync.state import Store


@dataclass
class App:
    settings: Settings
    store: Store
    lms: LmsClient
    connectors: dict[str, Any]
    engine: Engine
    stop_event: threading.Event = field(default_factory=threading.Event)
    lms_clients: dict[str, LmsClient] = field(default_factory=dict)

    def close(self) -> None:
        for c in self.connectors.values():
            c.close()
        for client in self.lms_clients.values() or [self.lms]:
            client.close()
        self.store.close()


def build_connectors(settings: Settings, stop_event: threading.Event,
                     transports: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load and configure every enabled source's connector; every problem is reported at once."""
    problems: list[str] = []
    built: dict[str, Any] = {}
    for name, src in settings.sources.items():
        if not src.enabled:
            continue
        try:
            cls = connector_registry.load(src.connector)
            conf = build_connector_settings(name, src, cls.settings_model)
            kwargs: dict[str, Any] = {"stop_event": stop_event}
            if transports and name in transports:
                kwargs["transport"] = transports[name]
            built[name] = cls(conf, **kwargs)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        for c in built.values():
            c.close()
        raise ConfigError(problems)
    return built


def build_app(settings: Settings, *, lms_transport: Any = None, pacing: bool = True,
              sleep: Any = None) -> App:
    stop_event = threading.Event()
    connectors = build_connectors(settings, stop_event)
    target = settings.state_target()
    store = Store.open(target)
    try:
        store.check_writable()   # every user of build_app writes (sync, retry, map)
    except Exception:
        store.close()
        for c in connectors.values():
            c.close()
        raise
    pg_url = target if not store.is_sqlite else None
    clients: dict[str, LmsClient] = {}
    try:
        for inst_id, inst in settings.institutes.items():
            limiter = None
            if pacing:
                limiter = make_limiter(inst.lms, Path(settings.state_path).resolve().parent, pg_url=pg_url)
            clients[inst_id] = LmsClient(inst.lms, transport=lms_transport, limiter=limiter, stop_event=stop_event,
                                         sleep=sleep)
    except Exception:
        store.close()
        for c in connectors.values():
            c.close()
        raise
    engine = Engine(settings, store, clients, connectors, stop_event=stop_event)
    return App(settings, store, engine.lms, connectors, engine, stop_event, clients)
