"""The scheduler's configuration: one frozen dataclass per TOML section, validated on construction.

Build a `Config` with `Config()` (all defaults: works with no file and no root),
`Config.from_toml(path)` or `Config.from_mapping(dict)`. Every problem raises `ConfigError`,
whose text starts with the dotted key at fault (`scheduling.strategy: must be ...`), so
`orka-scheduler check-config` can tell an operator exactly what to fix.

Deliberately strict: unknown sections and keys are errors (a typo must not silently fall back
to a default), types are checked (an int is accepted where a float is expected, a bool is never
an int), and durations are seconds as floats. `config.example.toml` at the repository root
documents every key with its default; a test keeps the two in sync.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from .model import Strategy
from .names import DEFAULT_TRUST_DOMAIN, TRUST_DOMAIN_RULE, valid_trust_domain

__all__ = [
    "Config",
    "ConfigError",
    "EtcdConfig",
    "EventsConfig",
    "LivenessConfig",
    "ObservabilityConfig",
    "SchedulingConfig",
    "ServerConfig",
    "StoreConfig",
    "TlsConfig",
    "default_data_dir",
    "parse_host_port",
]

# --- Defaults (each with the reason for its value) -------------------------------------------

DEFAULT_LISTEN = "[::]:50051"  # every interface, IPv4 and IPv6; 50051 is the gRPC convention
DEFAULT_SHUTDOWN_GRACE = 5.0  # s; enough to end streams cleanly, well inside systemd's stop timeout
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # 4 MiB: gRPC's customary receive limit
MAX_MESSAGE_BYTES_LIMIT = 2**32 - 1  # gRPC's length prefix is 32 bits: nothing larger can arrive
DEFAULT_MAX_CONNECTIONS = 20_000  # 10,000 nodes, each briefly twice while it reconnects
MIN_CONNECTIONS = 16  # fewer cannot serve a Controller and a handful of Agents
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # s; a TLS handshake takes milliseconds, even across regions
DEFAULT_MESSAGE_TIMEOUT = 10.0  # s for a started request message (or header block) to complete
DEFAULT_CONTROLLER_STREAMS = 10_000  # a Controller's open Schedule streams (one per instance)
MIN_CONTROLLER_STREAMS = 100  # HTTP/2's usual limit: never fewer than any other peer gets
DEFAULT_CONNECTION_RATE_PER_IP = 16.0  # new connections/s from one address: TLS costs ~2 ms each
STATE_DIR_NAME = "orka-scheduler"  # directory under $XDG_STATE_HOME / ~/.local/state
DEFAULT_NODE_TIMEOUT = 30.0  # s; several missed status reports before a node is declared LOST
DEFAULT_STATUS_RATE = 10.0  # messages/s per node; far above any sane Agent's report interval
DEFAULT_STATUS_BURST = 20  # messages; absorbs a reconnect flush without throttling it
DEFAULT_STRATEGY = Strategy.SPREAD  # keeps headroom on every node and limits blast radius
DEFAULT_ATTEMPT_TIMEOUT = 5.0  # s; an Agent that cannot answer Create in 5 s is treated as refusing
DEFAULT_MAX_ATTEMPTS = 0  # 0 = try every feasible node: never fail while a node could still accept
DEFAULT_EVENTS_RETAINED = 100_000  # events; minutes of history at high churn, a few tens of MB
DEFAULT_DEPARTED_RETAINED = 10_000  # LEFT/LOST nodes still listed: ~4 KiB each, ~40 MiB in all
DEFAULT_FINISHED_RETAINED = 10_000  # finished instances remembered until destroyed: ~0.7 KiB each
DEFAULT_HTTP_LISTEN = "127.0.0.1:9464"  # loopback only; 9464 is the Prometheus exporter port
DEFAULT_LOG_FORMAT = "text"  # human-readable; journald adds timestamps itself
DEFAULT_LOG_LEVEL = "info"  # lifecycle events without per-message noise
DEFAULT_STORE_BACKEND = "sqlite"  # one host, embedded, nothing else to run
DEFAULT_ETCD_ENDPOINT = "http://127.0.0.1:2379"  # etcd's own default client URL
DEFAULT_ETCD_PREFIX = "/orka"  # every key of this cluster lives under it
DEFAULT_LEASE_TTL = 5.0  # s; survives etcd's own leader elections (calls hang ~7 s, TTLs reset)
MIN_LEASE_TTL = 2.0  # s; etcd grants whole seconds, and nothing below ~1.5 s with its defaults

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
STORE_BACKENDS = ("sqlite", "etcd")


class ConfigError(ValueError):
    """A configuration problem at `key` (dotted, e.g. ``server.listen``; for an unreadable or
    malformed file, the file's path). `str()` is ``"<key>: <message>"``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message

    def in_file(self, path: str | os.PathLike[str]) -> str:
        """``"<file>: <key>: <message>"``, naming the file once: the key of a problem with the
        file itself (unreadable, not TOML) is already the file's path."""
        return str(self) if self.key == os.fspath(path) else f"{os.fspath(path)}: {self}"


# --- Helpers ---------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as TOML would spell it, for error messages."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a {type(value).__name__}"


def _one_of(choices: tuple[str, ...]) -> str:
    quoted = [json.dumps(c) for c in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _suggest(word: str, known: list[str]) -> str:
    """' (did you mean "x"?)' for a likely typo, else ''."""
    close = difflib.get_close_matches(word, known, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_ETCD_PREFIX = re.compile(r"(/[A-Za-z0-9._-]+)+")  # "/orka", "/clusters/eu-1": no trailing "/"


def parse_host_port(text: str, key: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` into (host, port); errors name `key`.

    IPv6 addresses must be bracketed (``[::]:50051``) and are returned without brackets. Port 0
    (let the OS choose) is allowed, for tests. Hostnames are not resolved here.
    """
    usage = f'must be HOST:PORT (IPv6 in brackets, e.g. "[::]:50051"), got {_show(text)}'
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port_text):
        raise ConfigError(key, usage)
    port = int(port_text)
    if port > 65535:
        raise ConfigError(key, f"port must be 0-65535, got {_show(text)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"not a valid IPv6 address in brackets: {_show(text)}") from None
    elif ":" in host:
        raise ConfigError(key, f"an IPv6 address must be in brackets, got {_show(text)}")
    elif _DOTTED_NUMBERS.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(key, f"not a valid IPv4 address: {_show(text)}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ConfigError(key, usage)
    return host, port


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where state lives when `server.data_dir` is not set; needs no root.

    `$STATE_DIRECTORY` (set by systemd's ``StateDirectory=``; the first entry if it lists
    several), else ``$XDG_STATE_HOME/orka-scheduler`` (only if absolute, as the XDG spec
    requires), else ``~/.local/state/orka-scheduler``.
    """
    env = os.environ if environ is None else environ
    state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:
        return Path(state_directory).expanduser()
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / STATE_DIR_NAME
    return Path("~/.local/state").expanduser() / STATE_DIR_NAME


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _check_types(section: Any) -> None:
    """Check each init field of a section against its annotation; int -> float where a float
    is expected. Raises ConfigError naming ``section.key``."""
    section_type: type = type(section)
    types = _field_types(section_type)
    for f in dataclasses.fields(section):
        if not f.init:
            continue
        key = f"{section.SECTION}.{f.name}"
        value = getattr(section, f.name)
        expected = types[f.name]
        if expected is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(key, f"must be a number, got {_show(value)}")
            object.__setattr__(section, f.name, float(value))
        elif expected is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(key, f"must be an integer, got {_show(value)}")
        elif expected is bool:
            if not isinstance(value, bool):
                raise ConfigError(key, f"must be true or false, got {_show(value)}")
        elif expected is str:
            if not isinstance(value, str):
                raise ConfigError(key, f"must be a string, got {_show(value)}")
        elif expected == list[str]:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(key, f"must be an array of strings, got {_show(value)}")
            object.__setattr__(section, f.name, list(value))
        elif expected is Path:
            if not isinstance(value, (str, os.PathLike)):
                raise ConfigError(key, f"must be a string (a path), got {_show(value)}")
        elif isinstance(expected, type) and issubclass(expected, enum.StrEnum):
            if value not in tuple(expected):  # a StrEnum member equals its text
                raise ConfigError(key, f"must be {_one_of(tuple(expected))}, got {_show(value)}")
            object.__setattr__(section, f.name, expected(value))
        else:  # pragma: no cover - a new field type needs a branch here
            raise TypeError(f"{key}: unsupported field type {expected!r}")


def _require(section: Any, name: str, ok: bool, what: str) -> None:
    if not ok:
        value = getattr(section, name)
        raise ConfigError(f"{section.SECTION}.{name}", f"{what}, got {_show(value)}")


def _seconds(section: Any, name: str, *, allow_zero: bool = False) -> None:
    value = getattr(section, name)
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    _require(section, name, ok, f"must be a number of seconds {'>=' if allow_zero else '>'} 0")


# --- Sections --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: the gRPC listener and where state is kept."""

    SECTION: ClassVar[str] = "server"

    listen: str = DEFAULT_LISTEN
    # "" (or absent) = default_data_dir(), computed when the config is built.
    data_dir: Path = field(default_factory=default_data_dir)
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE  # s
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # at most half the process's descriptors
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT  # s
    message_timeout: float = DEFAULT_MESSAGE_TIMEOUT  # s
    connection_rate_per_ip: float = DEFAULT_CONNECTION_RATE_PER_IP  # 0 = unlimited
    controller_streams: int = DEFAULT_CONTROLLER_STREAMS  # concurrent calls per connection
    # HOST:PORT that clients use to reach this scheduler (the leader's is in `orka-leader`);
    # "" = derived from `listen` at start (app.advertised_address).
    advertise: str = ""
    host: str = field(init=False)  # from `listen`; IPv6 without brackets
    port: int = field(init=False)  # from `listen`; 0 = chosen by the OS

    def __post_init__(self) -> None:
        _check_types(self)
        host, port = parse_host_port(self.listen, "server.listen")
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        data_dir = os.fspath(self.data_dir)
        object.__setattr__(
            self, "data_dir", Path(data_dir).expanduser() if data_dir else default_data_dir()
        )
        _seconds(self, "shutdown_grace", allow_zero=True)
        if self.advertise:
            _, advertised_port = parse_host_port(self.advertise, "server.advertise")
            _require(self, "advertise", advertised_port > 0, "must name a port 1-65535")
        _require(
            self,
            "max_message_bytes",
            1 <= self.max_message_bytes <= MAX_MESSAGE_BYTES_LIMIT,
            f"must be 1-{MAX_MESSAGE_BYTES_LIMIT} bytes",
        )
        _require(
            self,
            "max_connections",
            self.max_connections >= MIN_CONNECTIONS,
            f"must be an integer >= {MIN_CONNECTIONS}",
        )
        _seconds(self, "handshake_timeout")
        _seconds(self, "message_timeout")
        _require(
            self,
            "connection_rate_per_ip",
            math.isfinite(self.connection_rate_per_ip) and self.connection_rate_per_ip >= 0,
            "must be a number of connections per second >= 0 (0: no limit)",
        )
        _require(
            self,
            "controller_streams",
            self.controller_streams >= MIN_CONTROLLER_STREAMS,
            f"must be an integer >= {MIN_CONTROLLER_STREAMS}",
        )


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: certificate paths (all empty = development PKI generated in data_dir)."""

    SECTION: ClassVar[str] = "tls"

    ca: str = ""  # PEM file: the cluster CA that signs every peer's certificate
    cert: str = ""  # PEM file: the scheduler's own certificate
    key: str = ""  # PEM file: the private key of `cert`
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    agent_plaintext: bool = False  # dial Agents without TLS (old Agents)

    def __post_init__(self) -> None:
        _check_types(self)
        paths = ("ca", "cert", "key")
        for name in paths:
            value = getattr(self, name)
            object.__setattr__(self, name, os.path.expanduser(value) if value else "")
        given = [name for name in paths if getattr(self, name)]
        if given and len(given) < len(paths):
            missing = next(name for name in paths if not getattr(self, name))
            raise ConfigError(
                f"tls.{missing}",
                f"must be set when {' and '.join('tls.' + g for g in given)} "
                f"{'is' if len(given) == 1 else 'are'} set (set all of tls.ca, tls.cert, "
                "tls.key, or none for the generated development PKI)",
            )
        _require(
            self,
            "trust_domain",
            valid_trust_domain(self.trust_domain),
            f"must be {TRUST_DOMAIN_RULE}",
        )

    @property
    def configured(self) -> bool:
        """True if certificate paths are given; False means: use the generated development PKI."""
        return bool(self.ca)


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """``[liveness]``: when a silent node is LOST, and how fast a node may report."""

    SECTION: ClassVar[str] = "liveness"

    node_timeout: float = DEFAULT_NODE_TIMEOUT  # s without a valid status -> LOST
    status_rate: float = DEFAULT_STATUS_RATE  # messages/s per node; faster senders are throttled
    status_burst: int = DEFAULT_STATUS_BURST  # messages a node may send at once above the rate
    departed_retained: int = DEFAULT_DEPARTED_RETAINED  # LEFT/LOST nodes kept; oldest forgotten

    def __post_init__(self) -> None:
        _check_types(self)
        _seconds(self, "node_timeout")
        _require(self, "departed_retained", self.departed_retained >= 1, "must be an integer >= 1")
        _require(
            self,
            "status_rate",
            math.isfinite(self.status_rate) and self.status_rate > 0,
            "must be a number of messages per second > 0",
        )
        _require(self, "status_burst", self.status_burst >= 1, "must be an integer >= 1")


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    """``[scheduling]``: node priority and how placement attempts are made."""

    SECTION: ClassVar[str] = "scheduling"

    strategy: Strategy = DEFAULT_STRATEGY  # TOML: "spread" or "binpack"
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT  # s to wait for an Agent's first status
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # 0 = every feasible node
    finished_retained: int = DEFAULT_FINISHED_RETAINED  # finished instances kept until destroyed

    def __post_init__(self) -> None:
        _check_types(self)
        _seconds(self, "attempt_timeout")
        _require(self, "finished_retained", self.finished_retained >= 1, "must be an integer >= 1")
        _require(
            self, "max_attempts", self.max_attempts >= 0, "must be an integer >= 0 (0: every node)"
        )


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """``[events]``: the WatchEvents replay log."""

    SECTION: ClassVar[str] = "events"

    retained: int = DEFAULT_EVENTS_RETAINED  # events kept for replay

    def __post_init__(self) -> None:
        _check_types(self)
        _require(self, "retained", self.retained >= 1, "must be an integer >= 1")


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """``[observability]``: metrics/health HTTP endpoint and logging."""

    SECTION: ClassVar[str] = "observability"

    http_listen: str = DEFAULT_HTTP_LISTEN  # HOST:PORT of /metrics and /healthz; "" disables
    log_format: str = DEFAULT_LOG_FORMAT  # "text" or "json"
    log_level: str = DEFAULT_LOG_LEVEL  # stored lowercase
    http_host: str | None = field(init=False)  # from `http_listen`; None when disabled
    http_port: int | None = field(init=False)  # from `http_listen`; None when disabled

    def __post_init__(self) -> None:
        _check_types(self)
        host: str | None = None
        port: int | None = None
        if self.http_listen:
            host, port = parse_host_port(self.http_listen, "observability.http_listen")
        object.__setattr__(self, "http_host", host)
        object.__setattr__(self, "http_port", port)
        _require(
            self, "log_format", self.log_format in LOG_FORMATS, f"must be {_one_of(LOG_FORMATS)}"
        )
        level = self.log_level.lower()
        _require(self, "log_level", level in LOG_LEVELS, f"must be {_one_of(LOG_LEVELS)}")
        object.__setattr__(self, "log_level", level)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where durable state lives."""

    SECTION: ClassVar[str] = "store"

    backend: str = DEFAULT_STORE_BACKEND  # "sqlite" (data_dir) or "etcd" (several schedulers)

    def __post_init__(self) -> None:
        _check_types(self)
        _require(
            self, "backend", self.backend in STORE_BACKENDS, f"must be {_one_of(STORE_BACKENDS)}"
        )


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """``[etcd]``: the etcd cluster of `store.backend = "etcd"` (SPEC §4.1)."""

    SECTION: ClassVar[str] = "etcd"

    endpoints: list[str] = field(default_factory=lambda: [DEFAULT_ETCD_ENDPOINT])
    prefix: str = DEFAULT_ETCD_PREFIX
    lease_ttl: float = DEFAULT_LEASE_TTL  # s; the leadership lease
    ca: str = ""  # PEM file: the CA of etcd's server certificates; set = TLS (https endpoints)
    cert: str = ""  # PEM file: our client certificate, if etcd requires one (with key)
    key: str = ""
    addresses: tuple[tuple[str, int], ...] = field(init=False)  # (host, port) per endpoint

    def __post_init__(self) -> None:
        _check_types(self)
        if not self.endpoints:
            raise ConfigError("etcd.endpoints", "must list at least one endpoint")
        scheme = "https" if self.ca else "http"
        addresses = []
        for endpoint in self.endpoints:
            given, sep, rest = endpoint.partition("://")
            if not sep or given not in ("http", "https"):
                raise ConfigError(
                    "etcd.endpoints",
                    f'each must be "http://HOST:PORT" or '
                    f'"https://HOST:PORT", got {_show(endpoint)}',
                )
            if given != scheme:
                advice = "set (TLS): use https://" if self.ca else "empty: set it for https://"
                raise ConfigError(
                    "etcd.endpoints", f"{_show(endpoint)} is {given}, but etcd.ca is {advice}"
                )
            host, port = parse_host_port(rest.rstrip("/"), "etcd.endpoints")
            if port == 0:
                raise ConfigError(
                    "etcd.endpoints", f"must name a port 1-65535, got {_show(endpoint)}"
                )
            addresses.append((host, port))
        object.__setattr__(self, "addresses", tuple(addresses))
        _require(
            self,
            "prefix",
            bool(_ETCD_PREFIX.fullmatch(self.prefix)),
            'must be a key prefix like "/orka" (starts with "/", no trailing "/")',
        )
        _require(
            self,
            "lease_ttl",
            math.isfinite(self.lease_ttl) and self.lease_ttl >= MIN_LEASE_TTL,
            f"must be a number of seconds >= {MIN_LEASE_TTL:g}",
        )
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            object.__setattr__(self, name, os.path.expanduser(value) if value else "")
        if bool(self.cert) != bool(self.key):
            missing = "key" if self.cert else "cert"
            raise ConfigError(
                f"etcd.{missing}",
                "must be set together with etcd."
                f"{'cert' if missing == 'key' else 'key'} (a client certificate)",
            )
        if self.cert and not self.ca:
            raise ConfigError("etcd.ca", "must be set when etcd.cert and etcd.key are (TLS)")


# --- The whole configuration -----------------------------------------------------------------

_SECTIONS: dict[str, type] = {
    cls.SECTION: cls
    for cls in (
        ServerConfig,
        TlsConfig,
        LivenessConfig,
        SchedulingConfig,
        EventsConfig,
        ObservabilityConfig,
        StoreConfig,
        EtcdConfig,
    )
}


def _build_section(name: str, values: Any) -> Any:
    """Construct section `name` from a mapping, rejecting unknown keys by name."""
    cls = _SECTIONS.get(name)
    if cls is None:
        raise ConfigError(
            name,
            f"unknown section{_suggest(name, list(_SECTIONS))} (known: {', '.join(_SECTIONS)})",
        )
    if not isinstance(values, Mapping):
        raise ConfigError(name, f"must be a table ([{name}]), got {_show(values)}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{name}.{key}",
                f"unknown key{_suggest(str(key), known)} (known in [{name}]: {', '.join(known)})",
            )
    return cls(**values)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. `Config()` is the all-defaults configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigError(name, f"must be a {cls.__name__}, got {_show(value)}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        """Build from ``{"section": {"key": value}}`` (what tomllib returns). Absent sections and
        keys take their defaults; unknown ones are errors."""
        if not isinstance(data, Mapping):
            raise ConfigError("", f"configuration must be a table, got {_show(data)}")
        return cls(**{name: _build_section(name, values) for name, values in data.items()})

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Config:
        """Load and validate a TOML file. An unreadable or malformed file is a ConfigError whose
        key is the file's path."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(os.fspath(path), f"cannot read: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(os.fspath(path), f"not UTF-8 text: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(os.fspath(path), f"not valid TOML: {e}") from None
        return cls.from_mapping(data)

    def replace(self, **sections: Any) -> Config:
        """A copy with some keys changed: ``cfg.replace(liveness={"node_timeout": 2.0})``.

        Each argument is a section name and either a mapping of keys to change (the others keep
        their current values) or a whole section object. Validated like `from_mapping`.
        """
        changes: dict[str, Any] = {}
        for name, overrides in sections.items():
            current = getattr(self, name) if name in _SECTIONS else None
            if isinstance(overrides, Mapping) and current is not None:
                fields = dataclasses.fields(current)
                kept = {f.name: getattr(current, f.name) for f in fields if f.init}
                overrides = _build_section(name, {**kept, **overrides})  # names unknown keys
            elif current is None:
                _build_section(name, overrides)  # raises: unknown section
            changes[name] = overrides
        return dataclasses.replace(self, **changes)
