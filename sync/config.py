"""Configuration: one TOML file plus environment overrides, validated all at once.

Secrets (LMS key, ERP key/secret) come from environment variables or `*_file` paths (systemd
`LoadCredential=`, container secrets), are typed `SecretStr`, and are registered with the log
redactor the moment they are read.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator,
                      model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from sync import contract as C
from sync.errors import ConfigError
from sync.logs import register_secret
from sync.times import parse_duration, zone

DEFAULT_PAYMENT_METHODS: dict[str, str] = {
    "Cash": "cash",
    "Bank": "bank_transfer",
    "Bank Transfer": "bank_transfer",
    "Wire Transfer": "bank_transfer",
    "Bank Draft": "bank_transfer",
    "Cheque": "cheque",
    "Check": "cheque",
    "Credit Card": "online",
    "JazzCash": "jazzcash",
    "Easypaisa": "easypaisa",
}


class BadSecretFile(ValueError):
    """A `*_file` secret that cannot be read (a ValueError, so pydantic lists it with the other problems)."""


def read_secret_file(path: str | Path, what: str) -> SecretStr:
    p = Path(path).expanduser()
    try:
        value = p.read_text(encoding="utf-8").removeprefix("\ufeff").strip()   # an editor's byte-order mark
    except OSError as exc:
        raise BadSecretFile(f"{what}: cannot read secret file {str(p)!r}: {exc.strerror}") from None
    if not value:
        raise BadSecretFile(f"{what}: secret file {str(p)!r} is empty")
    register_secret(value)
    return SecretStr(value)


def resolve_secret_files(data: dict[str, Any], secret_fields: set[str], where: str) -> dict[str, Any]:
    """Turn `x_file = "/path"` into `x = SecretStr(<file content>)` for each secret field x. Every
    problem is reported (one per line of the error), in field order, not only the first one met."""
    out = dict(data)
    problems: list[str] = []
    for name in sorted(secret_fields):
        try:
            _resolve_one(out, name, where)
        except BadSecretFile as exc:
            problems.append(str(exc))
    if problems:
        raise BadSecretFile("\n".join(problems))
    return out


def _resolve_one(out: dict[str, Any], name: str, where: str) -> None:
    file_key = f"{name}_file"
    env = f"FEESYNC_{where.replace('.', '__')}__{name}".upper()
    value = out.get(name)
    if value is not None and not (value.get_secret_value() if isinstance(value, SecretStr) else str(value)).strip():
        if out.get(file_key):
            out.pop(name)   # an empty variable next to a key file: the file's key is the one meant
        else:
            hint = f" ({env} is set but empty)" if env in os.environ else ""
            raise BadSecretFile(f"{where}.{name}: is empty{hint}; set it, or remove it to use {file_key}")
    if out.get(file_key):
        if out.get(name):
            hint = f" ({env} is set in the environment)" if os.environ.get(env) else ""
            raise BadSecretFile(f"{where}: set either {name} or {file_key}, not both{hint}")
        out[name] = read_secret_file(out.pop(file_key), f"{where}.{file_key}")
    else:
        out.pop(file_key, None)
    value = out.get(name)
    if isinstance(value, SecretStr):
        register_secret(value.get_secret_value())
        check_secret_text(value.get_secret_value(), f"{where}.{name}", header=name in HEADER_SECRETS)
    elif isinstance(value, str) and value:
        register_secret(value)
        check_secret_text(value, f"{where}.{name}", header=name in HEADER_SECRETS)


# secrets sent in HTTP headers (Bearer / token / OAuth): ASCII only, or the request cannot even be built
HEADER_SECRETS = {"api_key", "api_secret", "token", "access_token", "refresh_token", "client_secret"}


def check_secret_text(value: str, what: str, *, header: bool) -> None:
    """Refuse a secret no server could accept, naming the position, never the value (a control character
    would otherwise surface, unredacted, inside an HTTP library's error text)."""
    for i, ch in enumerate(value):
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise BadSecretFile(f"{what}: contains a line break or other control character at position {i + 1}; "
                                "check the variable or file it comes from")
        if header and (ord(ch) > 0x7E or ch == " "):
            raise BadSecretFile(f"{what}: contains {'a space' if ch == ' ' else 'a non-ASCII character'} at "
                                f"position {i + 1}; it is sent in an HTTP header, which cannot carry it")


def secret_field_names(model: type[BaseModel]) -> set[str]:
    return {n for n, f in model.model_fields.items() if f.annotation in (SecretStr, SecretStr | None)}


# set by load_settings: LMS key problems found while reading the file, by the key file's path ("" for none)
_DEFERRED_KEY_PROBLEMS: ContextVar[dict[str, str] | None] = ContextVar("feesync_key_problems", default=None)


class LmsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = C.DEFAULT_BASE_URL
    api_key: SecretStr | None = None
    api_key_file: str | None = None
    time_zone: str = "Asia/Karachi"
    rate_limit_per_minute: int = Field(C.GENERAL_LIMIT_PER_MINUTE, ge=1)
    rate_safety: float = Field(0.97, gt=0, le=1)   # pace at this fraction of the limit
    timeout_seconds: float = Field(30.0, gt=0, le=3600)
    max_attempts: int = Field(5, ge=1, le=20)
    max_retry_seconds: float = Field(60.0, gt=0, le=86_400)
    retry_after_cap_seconds: float = Field(30.0, ge=0, le=86_400)
    limiter_path: str | None = None   # shared pacing file; default beside the state store

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            return resolve_secret_files(data, {"api_key"}, "lms")
        except BadSecretFile as exc:
            deferred = _DEFERRED_KEY_PROBLEMS.get()
            if deferred is None:
                raise
            # load_settings: the key stays unset and the problem is told by missing_secrets, so the
            # commands that read only the state store still work, and `check` lists it with the others
            data = {k: v for k, v in data.items() if k != "api_key"}
            deferred[str(data.get("api_key_file") or "")] = str(exc)
            return data

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class MappingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_methods: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PAYMENT_METHODS))
    default_payment_method: str | None = None   # used for unknown modes; None -> conflict
    match_students_by_email: bool = True
    customers: dict[str, str] = Field(default_factory=dict)   # ERP customer -> LMS student id
    invoices: dict[str, str] = Field(default_factory=dict)    # ERP invoice -> LMS plan id
    batches: dict[str, str] = Field(default_factory=dict)     # ERP batch ref (item code, custom_batch, ...) -> LMS batch id
    default_batch_id: str | None = None                       # for invoices whose batch is not in `batches`
    credit_note_policy: str = "latest_first"                  # which unpaid installments a credit note waives
    plan_wait_limit: str = "24h"                               # a receipt waits this long for its plan

    @field_validator("credit_note_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v not in ("latest_first", "earliest_first"):
            raise ValueError("must be latest_first or earliest_first")
        return v

    @field_validator("payment_methods")
    @classmethod
    def _methods(cls, v: dict[str, str]) -> dict[str, str]:
        merged = dict(DEFAULT_PAYMENT_METHODS)
        merged.update(v)
        bad = {k: m for k, m in merged.items() if m not in C.PAYMENT_METHODS}
        if bad:
            raise ValueError(f"unknown LMS payment methods {bad}; allowed: {', '.join(C.PAYMENT_METHODS)}")
        return merged

    @field_validator("default_payment_method")
    @classmethod
    def _default(cls, v: str | None) -> str | None:
        if v is not None and v not in C.PAYMENT_METHODS:
            raise ValueError(f"must be one of {', '.join(C.PAYMENT_METHODS)}")
        return v


SECRET_SETTING_KEYS = {"api_key", "api_secret", "password", "secret", "token", "client_secret", "refresh_token",
                       "access_token"}


class SourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connector: str
    enabled: bool = True
    interval: str | None = "5m"
    cron: str | None = None
    lookback: str = "10m"
    lag: str = "2s"
    institute: str = "default"   # set from the [institutes.<id>] section the source is declared in
    key_prefix: str = ""          # prepended to Idempotency-Keys when several ERPs share one institute
    max_stale: str | None = None   # /healthz: last successful run must be newer than this
    settings: dict[str, Any] = Field(default_factory=dict)
    mapping: MappingSettings = Field(default_factory=MappingSettings)

    @field_validator("lookback", "lag", "interval", "max_stale")
    @classmethod
    def _durations(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            d = parse_duration(v)
            if info.field_name in ("interval", "max_stale") and d.total_seconds() < 1:
                raise ValueError(f"{info.field_name} {v!r} must be at least 1s")
        return v

    @model_validator(mode="after")
    def _hide_secrets(self) -> SourceSettings:
        """Connector secrets become SecretStr the moment they are read, not only inside the connector."""
        for key, value in list(self.settings.items()):
            if not isinstance(value, str) or not value:
                continue
            if key in SECRET_SETTING_KEYS or key.endswith(("_secret", "_password", "_token")):
                register_secret(value)
                self.settings[key] = SecretStr(value)
            elif key == "url" and "://" in value and "@" in value:
                from sqlalchemy.engine import make_url
                try:
                    password = make_url(value).password
                except Exception:  # noqa: BLE001 - not a database URL: leave it to the connector
                    password = None
                if password:
                    register_secret(str(password))
                    self.settings[key] = SecretStr(value)
        return self

    def lookback_td(self) -> timedelta:
        return parse_duration(self.lookback)

    def lag_td(self) -> timedelta:
        return parse_duration(self.lag)

    def plan_wait_td(self) -> timedelta:
        return parse_duration(self.mapping.plan_wait_limit)


class InstituteSettings(BaseModel):
    """One LMS institute (one API key, its own rate budget) and the sources that write to it."""

    model_config = ConfigDict(extra="forbid")

    lms: LmsSettings
    sources: dict[str, SourceSettings] = Field(default_factory=dict)


class Settings(BaseSettings):
    """The whole configuration. `FEESYNC_CONFIG` or `--config` names the TOML file."""

    model_config = SettingsConfigDict(env_prefix="FEESYNC_", env_nested_delimiter="__", extra="forbid")
    toml_path: ClassVar[Path | None] = None
    _config_file: str | None = PrivateAttr(default=None)   # the TOML file it was read from, as given
    _key_problems: dict[str, str] = PrivateAttr(default_factory=dict)   # LMS key file/value refused, by path

    @property
    def config_file(self) -> str | None:
        return self._config_file

    state_path: str = "./feesync-state.db"
    state_url: SecretStr | None = None   # e.g. postgresql+psycopg://user:pass@host/db (replicas share it)
    lease_ttl: str = "30s"               # a replica that stops renewing loses its sources after this
    log_format: str = "auto"    # auto | json | console
    log_level: str = "info"
    report_dir: str = "./feesync-reports"
    # --- ops tooling (sync/report.py, sync/web.py, self-healing retries in sync/daemon.py) ---
    report_schedule: str = "daily"             # daemon writes the report: daily | hourly | off | 6h | crontab
    status_listen: str | None = None           # status page on a loopback "host:port"; off when unset
    status_admin_token: SecretStr | None = None   # enables resolve/ignore/retry on the status page
    status_admin_token_file: str | None = None
    heal_interval: str = "15m"                 # self-healing conflicts are retried this often ...
    heal_max_attempts: int = Field(20, ge=0)   # ... at most this many times each; then they wait for a person
    reconcile_schedule: str = "daily"          # the periodic reconcile pass (rule 9): daily | hourly | off | 6h | crontab
    reconcile_window: str = "7d"               # ... over this much recent ERP history

    @field_validator("state_path", "report_dir")
    @classmethod
    def _a_path(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("is a file path; a database URL goes in state_url")
        return str(Path(v).expanduser()) if v.startswith("~") else v

    @model_validator(mode="before")
    @classmethod
    def _admin_token_file(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return resolve_secret_files(data, {"status_admin_token"}, "settings")
        return data

    @field_validator("status_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v:
            from sync._web_util import parse_listen   # loopback only; raises ValueError with the reason
            parse_listen(v)
        return v or None

    @field_validator("report_schedule", "reconcile_schedule")
    @classmethod
    def _report_schedule(cls, v: str) -> str:
        from sync.report import parse_schedule   # raises ValueError with the accepted forms
        parse_schedule(v, "UTC")
        return v

    @field_validator("heal_interval", "reconcile_window")
    @classmethod
    def _heal_interval(cls, v: str) -> str:
        parse_duration(v)
        return v
    lms: LmsSettings | None = None                       # the single institute's LMS (or use [institutes])
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    institutes: dict[str, InstituteSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _flatten(self) -> Settings:
        """Every source ends up in `sources` with its `institute`; the top-level [lms] is institute 'default'."""
        if self.lms is not None and "default" not in self.institutes:
            self.institutes["default"] = InstituteSettings(lms=self.lms, sources={})
            for src in self.sources.values():
                src.institute = "default"
        elif self.lms is None and self.sources and not self.institutes:
            self.lms = LmsSettings()
            self.institutes["default"] = InstituteSettings(lms=self.lms, sources={})
        for inst_id, inst in self.institutes.items():
            for name, src in inst.sources.items():
                if name in self.sources and self.sources[name] is not src:
                    raise ValueError(f"source {name!r} is declared twice (source names are global)")
                src.institute = inst_id
                self.sources[name] = src
        if self.lms is None and self.institutes:
            self.lms = next(iter(self.institutes.values())).lms
        if self.lms is None:
            self.lms = LmsSettings()
        if self.state_url is not None:
            from sqlalchemy.engine import make_url
            try:
                pw = make_url(self.state_url.get_secret_value()).password
            except Exception:  # noqa: BLE001 - reported as a config problem below
                raise ValueError("state_url is not a database URL") from None
            if pw:
                register_secret(str(pw))
        return self

    def lms_for(self, source: str) -> LmsSettings:
        return self.institutes[self.sources[source].institute].lms

    def state_target(self) -> str:
        return self.state_url.get_secret_value() if self.state_url is not None else self.state_path

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_path))
        return tuple(sources)

    @field_validator("log_format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        if v not in {"auto", "json", "console"}:
            raise ValueError("must be auto, json or console")
        return v


def _format_validation(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts = [str(x) for x in err["loc"]]
        if len(parts) >= 2 and parts[0] in ("sources", "institutes") and err["type"] == "missing":
            # a source (or institute) that only the environment names: say which variables made it up
            head = f"FEESYNC_{parts[0]}__{parts[1]}__".upper()
            named = sorted(k for k in os.environ if k.upper().startswith(head))
            if named:
                msg += (f" (the environment sets {', '.join(named)}, but the config file defines no "
                        f"{parts[0]}.{parts[1]}: unset them or add that section)")
        for line in msg.split("\n"):   # a validator that found several problems says each on a line
            # a message that already names its field ("lms.api_key_file: ...") needs no location before it
            named = loc and (line.startswith(loc + ".") or line.startswith(loc + ":"))
            problems.append(f"{prefix}{line}" if named or not loc else f"{prefix}{loc}: {line}")
    return problems


def missing_secrets(settings: Settings) -> list[str]:
    """The LMS keys that are not configured (commands that only read the state store do not need them)."""
    problems = []
    known = settings._key_problems
    for inst_id, inst in settings.institutes.items():
        if inst.lms.api_key is None:
            where = "lms" if inst_id == "default" and inst.lms is settings.lms else f"institutes.{inst_id}.lms"
            env = "FEESYNC_LMS__API_KEY" if where == "lms" else f"FEESYNC_INSTITUTES__{inst_id.upper()}__LMS__API_KEY"
            found = known.get(str(inst.lms.api_key_file or ""))
            if found:   # read from the file (or an empty variable) and refused: say why
                problems += [f"{where}.{line.removeprefix('lms.')}" if line.startswith("lms.") else line
                             for line in found.split("\n")]
            else:
                problems.append(f"{where}.api_key: missing (set {env} or {where}.api_key_file)")
    if not settings.institutes and settings.lms is not None and settings.lms.api_key is None:
        problems.append("lms.api_key: missing (set FEESYNC_LMS__API_KEY or lms.api_key_file)")
    return problems


def require_secrets(settings: Settings) -> None:
    problems = missing_secrets(settings)
    if problems:
        raise ConfigError(problems)


def load_settings(path: str | Path | None = None, *, secrets: bool = True, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError listing every problem.

    `secrets=False` skips the check that the LMS keys are set (for commands that read only the state)."""
    path = path or os.environ.get("FEESYNC_CONFIG")
    toml_path: Path | None = None
    if path:
        toml_path = Path(path)
        if not toml_path.is_file():
            raise ConfigError(f"config file {str(toml_path)!r} does not exist")
    Settings.toml_path = toml_path
    key_problems: dict[str, str] = {}
    token = _DEFERRED_KEY_PROBLEMS.set(key_problems)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        found = [line for text in key_problems.values() for line in text.split("\n")]
        raise ConfigError(found + _format_validation(exc)) from None
    except ConfigError:
        raise
    except ValueError as exc:   # TOML syntax errors
        raise ConfigError(f"config file {str(toml_path)!r}: {exc}") from None
    finally:
        Settings.toml_path = None
        _DEFERRED_KEY_PROBLEMS.reset(token)
    settings._config_file = str(toml_path) if toml_path else None
    settings._key_problems = key_problems
    problems: list[str] = missing_secrets(settings) if secrets else []
    problems += _shared_origins(settings) + _shared_keys(settings)
    for name, src in settings.sources.items():
        if not src.interval and not src.cron:
            problems.append(f"sources.{name}: needs interval or cron")
        if src.cron:
            from apscheduler.triggers.cron import CronTrigger
            try:
                CronTrigger.from_crontab(src.cron)
            except ValueError as exc:
                problems.append(f"sources.{name}.cron: {exc}")
    if problems:
        raise ConfigError(problems)
    return settings


# the settings that name where a source reads from: two sources of one institute with the same ones read
# the same receipts, and (with different key prefixes) would record each in the LMS twice
ORIGIN_KEYS = ("folder", "url", "base_url", "host_header", "db", "database", "organization_id", "company", "query",
               "view", "table", "pattern")


_LOOPBACK = {"localhost", "localhost.localdomain", "ip6-localhost", "::1", "0.0.0.0"}   # noqa: S104 - names


def _origin_of(url: str) -> str:
    """One spelling per server: scheme and host lower-cased, the default port made explicit, loopback
    names made one, credentials dropped, trailing slashes gone (`http://localhost:80/` is
    `http://127.0.0.1`)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text.lower().rstrip("/")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if host in _LOOPBACK or host == "127.0.0.1":   # names of the one loopback server (127.0.0.2 is another)
        host = "127.0.0.1"
    port = port or {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _shared_keys(settings: Settings) -> list[str]:
    """Two institutes on one LMS key are one LMS institute: each receipt would be written once per section."""
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for inst_id, inst in sorted(settings.institutes.items()):
        key = inst.lms.api_key.get_secret_value() if inst.lms.api_key is not None else ""
        if not key:
            continue
        ident = (_origin_of(str(inst.lms.base_url)), key)
        if ident in seen:
            problems.append(f"institutes.{inst_id}.lms: the same LMS and API key as institutes.{seen[ident]}; "
                            "one key is one LMS institute, so its sources belong in one section")
        else:
            seen[ident] = inst_id
    return problems


def _shared_origins(settings: Settings) -> list[str]:
    seen: dict[tuple[Any, ...], str] = {}
    problems = []
    for name, src in sorted(settings.sources.items()):
        if not src.enabled:
            continue
        origin = []
        for key in ORIGIN_KEYS:
            value = src.settings.get(key)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, str) and value:
                if key == "folder":
                    value = str(Path(value).expanduser().resolve())
                elif key in ("url", "base_url"):
                    value = _origin_of(value)
                elif key == "host_header":
                    value = value.strip().lower().rstrip(".")
                else:
                    value = value.strip().rstrip("/")
                origin.append((key, value))
        if not origin:
            continue
        ident = (src.institute, src.connector, tuple(origin))
        if ident in seen:
            what = ", ".join(k for k, _ in origin)
            problems.append(f"sources.{name}: reads the same {src.connector} data as sources.{seen[ident]} (same "
                            f"{what}) for the same institute; each receipt would be written once per source. "
                            "Keep one of them")
        else:
            seen[ident] = name
    return problems


def build_connector_settings(name: str, src: SourceSettings, model: type[BaseModel]) -> BaseModel:
    """Validate a source's connector settings with the connector's own model (secrets resolved)."""
    secret_fields = secret_field_names(model)
    problems: list[str] = []
    try:
        data = resolve_secret_files(src.settings, secret_fields, f"sources.{name}.settings")
    except BadSecretFile as exc:
        problems = str(exc).split("\n")
        # validate the rest too, so every problem is told at once; a field whose file failed is not
        # "missing" a second time
        data = {k: v for k, v in src.settings.items() if not (k.endswith("_file") and k[:-5] in secret_fields)}
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        failed = {p.split(":")[0].removeprefix(f"sources.{name}.settings.").removesuffix("_file") for p in problems}
        problems += [p for p in _format_validation(exc, f"sources.{name}.settings.")
                     if not (p.split(":")[0].removeprefix(f"sources.{name}.settings.") in failed
                             and p.endswith("Field required"))]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return validated


def raw_source_problems(path: str | Path | None) -> list[str]:
    """Each source's connector settings checked straight from the TOML file, for `check` when the file as
    a whole did not validate (so the sources' problems are listed in the same answer)."""
    import tomllib

    from sync import connector as registry
    if not path:
        return []
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    sections: list[tuple[str, Any]] = list((raw.get("sources") or {}).items())
    for inst in (raw.get("institutes") or {}).values():
        if isinstance(inst, dict):
            sections += list((inst.get("sources") or {}).items())
    problems: list[str] = []
    for name, sec in sections:
        if not isinstance(sec, dict) or not isinstance(sec.get("connector"), str) or sec.get("enabled") is False:
            continue
        try:
            model = registry.load(sec["connector"]).settings_model
        except ConfigError as exc:   # not installed, or not a connector
            problems += [f"sources.{name}.connector: {p}" for p in exc.problems]
            continue
        except Exception:  # noqa: BLE001 - anything else is reported when the file validates
            continue
        settings = sec.get("settings") if isinstance(sec.get("settings"), dict) else {}
        try:
            build_connector_settings(name, _RawSource(settings), model)
        except ConfigError as exc:
            problems += exc.problems
    return problems


class _RawSource:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
