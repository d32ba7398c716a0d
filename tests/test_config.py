"""scheduler.config: defaults, validation that names the key at fault, and config.example.toml
kept in sync with the dataclasses."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import tomllib
from pathlib import Path

import pytest

from scheduler.config import (
    Config,
    ConfigError,
    ServerConfig,
    default_data_dir,
    parse_host_port,
)
from scheduler.model import Strategy
from scheduler.names import TRUST_DOMAIN_RULE, valid_trust_domain

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


@pytest.fixture(autouse=True)
def _clean_state_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make the computed data_dir independent of the environment the tests run in."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def error_for(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(data)
    return info.value


def assert_names(err: ConfigError, key: str) -> None:
    assert err.key == key
    assert str(err).startswith(f"{key}: ")


# --- Defaults --------------------------------------------------------------------------------


def test_defaults_with_no_file(tmp_path: Path) -> None:
    cfg = Config()
    assert cfg == Config.from_mapping({})
    assert cfg.server.listen == "[::]:50051"
    assert (cfg.server.host, cfg.server.port) == ("::", 50051)
    assert cfg.server.data_dir == tmp_path / "home/.local/state/orka-scheduler"
    assert cfg.server.shutdown_grace == 5.0
    assert cfg.server.max_message_bytes == 4 * 1024 * 1024
    assert (cfg.tls.ca, cfg.tls.cert, cfg.tls.key) == ("", "", "")
    assert not cfg.tls.configured
    assert cfg.tls.trust_domain == "orka.local"
    assert cfg.tls.agent_plaintext is False
    assert cfg.liveness.node_timeout == 30.0
    assert cfg.liveness.status_rate == 10.0
    assert cfg.liveness.status_burst == 20
    assert cfg.scheduling.strategy is Strategy.SPREAD
    assert cfg.scheduling.attempt_timeout == 5.0
    assert cfg.scheduling.max_attempts == 0
    assert cfg.events.retained == 100_000
    assert cfg.observability.http_listen == "127.0.0.1:9464"
    assert (cfg.observability.http_host, cfg.observability.http_port) == ("127.0.0.1", 9464)
    assert cfg.observability.log_format == "text"
    assert cfg.observability.log_level == "info"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server = ServerConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.liveness.node_timeout = 1.0  # type: ignore[misc]


def test_partial_mapping_keeps_other_defaults() -> None:
    cfg = Config.from_mapping(
        {"liveness": {"node_timeout": 2.0}, "server": {"listen": "127.0.0.1:0"}}
    )
    assert cfg.liveness.node_timeout == 2.0
    assert cfg.liveness.status_rate == 10.0
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 0)
    assert cfg.scheduling == Config().scheduling


# --- Bad values and types name the key -------------------------------------------------------

BAD_VALUES = [
    ("server", "listen", "nope"),
    ("server", "listen", ""),
    ("server", "shutdown_grace", -1.0),
    ("server", "shutdown_grace", math.inf),
    ("server", "max_message_bytes", 0),
    ("server", "max_message_bytes", 2**32),
    ("server", "max_connections", 15),
    ("server", "controller_streams", 99),
    ("server", "handshake_timeout", 0),
    ("server", "handshake_timeout", math.inf),
    ("server", "message_timeout", -1.0),
    ("server", "connection_rate_per_ip", -1.0),
    ("server", "connection_rate_per_ip", math.inf),
    ("tls", "trust_domain", ""),
    ("tls", "trust_domain", "Orka Local"),
    ("liveness", "node_timeout", 0.0),
    ("liveness", "node_timeout", -5),
    ("liveness", "node_timeout", math.nan),
    ("liveness", "status_rate", 0.0),
    ("liveness", "status_rate", math.inf),
    ("liveness", "status_burst", 0),
    ("liveness", "departed_retained", 0),
    ("scheduling", "strategy", "fast"),
    ("scheduling", "strategy", "Spread"),
    ("scheduling", "attempt_timeout", 0),
    ("scheduling", "max_attempts", -1),
    ("scheduling", "finished_retained", 0),
    ("events", "retained", 0),
    ("observability", "http_listen", "9464"),
    ("observability", "log_format", "xml"),
    ("observability", "log_level", "verbose"),
    ("server", "advertise", "nope"),
    ("server", "advertise", "sched-1:0"),
    ("store", "backend", "postgres"),
    ("etcd", "endpoints", []),
    ("etcd", "endpoints", ["127.0.0.1:2379"]),
    ("etcd", "endpoints", ["grpc://127.0.0.1:2379"]),
    ("etcd", "endpoints", ["https://127.0.0.1:2379"]),
    ("etcd", "endpoints", ["http://127.0.0.1"]),
    ("etcd", "endpoints", ["http://127.0.0.1:0"]),
    ("etcd", "prefix", "orka"),
    ("etcd", "prefix", "/orka/"),
    ("etcd", "prefix", "/"),
    ("etcd", "prefix", "/my cluster"),
    ("etcd", "lease_ttl", 1.0),
    ("etcd", "lease_ttl", math.inf),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_value_names_the_key(section: str, key: str, value: object) -> None:
    assert_names(error_for({section: {key: value}}), f"{section}.{key}")


@pytest.mark.parametrize(
    ("domain", "valid"),
    [("a" * 255, True), ("a" * 256, False), ("a" * 300, False), ("orka.local", True)],
)
def test_trust_domain_follows_the_one_rule_of_names(domain: str, valid: bool) -> None:
    """config and the identity checks agree: a 300-character domain, once accepted here, could
    never match a certificate (scheduler.names holds the one rule)."""
    assert valid_trust_domain(domain) is valid
    if valid:
        assert Config().replace(tls={"trust_domain": domain}).tls.trust_domain == domain
    else:
        err = error_for({"tls": {"trust_domain": domain}})
        assert str(err).startswith(f"tls.trust_domain: must be {TRUST_DOMAIN_RULE}, got "), err


def test_bad_value_message_shows_choices_and_value() -> None:
    err = error_for({"scheduling": {"strategy": "fast"}})
    assert str(err) == 'scheduling.strategy: must be "spread" or "binpack", got "fast"'


WRONG_TYPES = [
    ("server", "listen", 50051),
    ("server", "data_dir", 1),
    ("server", "shutdown_grace", "5"),
    ("server", "shutdown_grace", True),
    ("server", "max_message_bytes", 4.0),
    ("server", "max_message_bytes", True),
    ("server", "max_connections", 2e4),
    ("server", "handshake_timeout", "10s"),
    ("server", "message_timeout", None),
    ("server", "connection_rate_per_ip", "16/s"),
    ("tls", "ca", ["a"]),
    ("tls", "trust_domain", {"a": 1}),
    ("tls", "agent_plaintext", 1),
    ("tls", "agent_plaintext", "true"),
    ("liveness", "node_timeout", "30s"),
    ("liveness", "status_rate", False),
    ("liveness", "status_burst", 20.0),
    ("scheduling", "strategy", 1),
    ("scheduling", "attempt_timeout", None),
    ("scheduling", "max_attempts", False),
    ("events", "retained", "100000"),
    ("observability", "http_listen", 9464),
    ("observability", "log_format", None),
    ("observability", "log_level", 20),
    ("server", "advertise", 50051),
    ("store", "backend", None),
    ("etcd", "endpoints", "http://127.0.0.1:2379"),
    ("etcd", "endpoints", [2379]),
    ("etcd", "lease_ttl", "5s"),
    ("etcd", "ca", 1),
]


@pytest.mark.parametrize(("section", "key", "value"), WRONG_TYPES)
def test_wrong_type_names_the_key(section: str, key: str, value: object) -> None:
    assert_names(error_for({section: {key: value}}), f"{section}.{key}")


def test_int_accepted_where_float_expected() -> None:
    cfg = Config.from_mapping({"liveness": {"node_timeout": 2}, "server": {"shutdown_grace": 0}})
    assert cfg.liveness.node_timeout == 2.0
    assert isinstance(cfg.liveness.node_timeout, float)
    assert isinstance(cfg.server.shutdown_grace, float)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig(shutdown_grace="5")  # type: ignore[arg-type]
    assert_names(info.value, "server.shutdown_grace")
    with pytest.raises(ConfigError) as info:
        Config(server="x")  # type: ignore[arg-type]
    assert_names(info.value, "server")


def test_log_level_is_case_insensitive() -> None:
    cfg = Config.from_mapping({"observability": {"log_level": "WARNING"}})
    assert cfg.observability.log_level == "warning"


def test_http_listen_empty_disables() -> None:
    obs = Config.from_mapping({"observability": {"http_listen": ""}}).observability
    assert (obs.http_host, obs.http_port) == (None, None)


# --- Unknown sections and keys ---------------------------------------------------------------


def test_unknown_key_is_named() -> None:
    err = error_for({"server": {"lisen": "[::]:1"}})
    assert_names(err, "server.lisen")
    assert "unknown key" in str(err)
    assert '"listen"' in str(err)  # suggestion for the typo


def test_unknown_section_is_named() -> None:
    err = error_for({"schedulng": {"strategy": "spread"}})
    assert_names(err, "schedulng")
    assert "unknown section" in str(err)
    assert '"scheduling"' in str(err)


def test_subtable_inside_section_is_an_unknown_key() -> None:
    assert_names(error_for({"server": {"extra": {"a": 1}}}), "server.extra")


def test_section_that_is_not_a_table() -> None:
    assert_names(error_for({"server": "[::]:50051"}), "server")


# --- High availability: [store], [etcd], server.advertise ----------------------------------


def test_etcd_section_parses() -> None:
    cfg = Config.from_mapping(
        {
            "store": {"backend": "etcd"},
            "server": {"advertise": "sched-1.example:50051"},
            "etcd": {
                "endpoints": ["http://10.0.0.1:2379", "http://[::1]:2379", "http://etcd-3:2379"],
                "prefix": "/clusters/eu-1",
                "lease_ttl": 3,
            },
        }
    )
    assert cfg.store.backend == "etcd" and cfg.server.advertise == "sched-1.example:50051"
    assert cfg.etcd.addresses == (("10.0.0.1", 2379), ("::1", 2379), ("etcd-3", 2379))
    assert cfg.etcd.lease_ttl == 3.0 and cfg.etcd.prefix == "/clusters/eu-1"


def test_etcd_tls_needs_https_and_names_what_is_missing() -> None:
    cfg = Config.from_mapping(
        {
            "etcd": {
                "endpoints": ["https://etcd-1:2379"],
                "ca": "/p/ca.pem",
                "cert": "/p/c.pem",
                "key": "/p/k.pem",
            }
        }
    )
    assert cfg.etcd.addresses == (("etcd-1", 2379),)
    err = error_for({"etcd": {"endpoints": ["http://etcd-1:2379"], "ca": "/p/ca.pem"}})
    assert_names(err, "etcd.endpoints")
    assert "use https://" in str(err)
    assert_names(
        error_for({"etcd": {"endpoints": ["https://e:2379"], "ca": "/ca", "cert": "/c"}}),
        "etcd.key",
    )
    assert_names(
        error_for({"etcd": {"endpoints": ["http://e:2379"], "cert": "/c", "key": "/k"}}), "etcd.ca"
    )


# --- TLS paths: all or none ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"ca": "ca.pem"}, "cert"),
        ({"cert": "c.pem"}, "ca"),
        ({"key": "k.pem"}, "ca"),
        ({"ca": "ca.pem", "cert": "c.pem"}, "key"),
        ({"ca": "ca.pem", "key": "k.pem"}, "cert"),
        ({"cert": "c.pem", "key": "k.pem"}, "ca"),
    ],
)
def test_partial_tls_paths_name_the_missing_one(given: dict, missing: str) -> None:
    err = error_for({"tls": given})
    assert_names(err, f"tls.{missing}")
    assert "must be set" in str(err)


def test_all_tls_paths_set(tmp_path: Path) -> None:
    tls = Config.from_mapping(
        {"tls": {"ca": "/pki/ca.pem", "cert": "~/c.pem", "key": "/pki/k.pem"}}
    ).tls
    assert tls.configured
    assert tls.ca == "/pki/ca.pem"
    assert tls.cert == str(tmp_path / "home/c.pem")  # "~" expanded


# --- Listen addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("[::]:50051", "::", 50051),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("localhost:50051", "localhost", 50051),
        ("0.0.0.0:65535", "0.0.0.0", 65535),
        ("[::1]:8080", "::1", 8080),
        ("[fe80::1%eth0]:1", "fe80::1%eth0", 1),
        ("scheduler.orka.local:443", "scheduler.orka.local", 443),
    ],
)
def test_listen_parses(text: str, host: str, port: int) -> None:
    assert parse_host_port(text, "server.listen") == (host, port)
    server = Config.from_mapping({"server": {"listen": text}}).server
    assert (server.host, server.port) == (host, port)


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "1.2.3.4:70000",
        "",
        ":50051",
        "localhost:",
        "localhost:-1",
        "localhost:+1",
        "localhost:50051 ",
        "::1:50051",
        "[::1]",
        "[nope]:1",
        "[127.0.0.1]:1",
        "999.1.1.1:1",
        "bad host:1",
        "-leading.dash:1",
        "localhost:123456",
    ],
)
def test_bad_listen_is_named(text: str) -> None:
    assert_names(error_for({"server": {"listen": text}}), "server.listen")
    http = error_for({"observability": {"http_listen": text or "x"}})
    assert_names(http, "observability.http_listen")


# --- data_dir --------------------------------------------------------------------------------


def test_state_directory_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert Config().server.data_dir == tmp_path / "systemd"
    assert Config.from_mapping({"server": {"data_dir": ""}}).server.data_dir == tmp_path / "systemd"


def test_state_directory_first_of_several(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/a:/var/lib/b")
    assert default_data_dir() == Path("/var/lib/a")


def test_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Config().server.data_dir == tmp_path / "xdg/orka-scheduler"


def test_relative_xdg_state_home_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "relative")
    assert Config().server.data_dir == tmp_path / "home/.local/state/orka-scheduler"


def test_data_dir_resolved_at_load_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = Config()
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "later"))
    assert Config().server.data_dir == tmp_path / "later"
    assert before.server.data_dir != tmp_path / "later"  # an existing config does not change


def test_explicit_data_dir_expands_user(tmp_path: Path) -> None:
    cfg = Config.from_mapping({"server": {"data_dir": "~/orka"}})
    assert cfg.server.data_dir == tmp_path / "home/orka"
    assert Config.from_mapping({"server": {"data_dir": "/srv/orka"}}).server.data_dir == Path(
        "/srv/orka"
    )


# --- Files -----------------------------------------------------------------------------------


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[scheduling]\nstrategy = "binpack"\nmax_attempts = 3\n')
    cfg = Config.from_toml(path)
    assert (cfg.scheduling.strategy, cfg.scheduling.max_attempts) == (Strategy.BINPACK, 3)
    assert cfg.scheduling.strategy is Strategy.BINPACK  # the enum, not its text
    assert Config.from_toml(str(path)) == cfg


def test_from_toml_error_names_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[liveness]\nnode_timeout = -1\n")
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert_names(info.value, "liveness.node_timeout")


@pytest.mark.parametrize("content", [None, "[server\n", b"\xff\xfe"])
def test_unreadable_or_malformed_file_names_the_file(tmp_path: Path, content: object) -> None:
    path = tmp_path / "c.toml"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Config.from_toml(path)
    assert_names(info.value, str(path))


# --- replace ---------------------------------------------------------------------------------


def test_replace_changes_only_given_keys() -> None:
    base = Config.from_mapping({"liveness": {"status_rate": 3.0}})
    cfg = base.replace(liveness={"node_timeout": 2}, server={"listen": "127.0.0.1:0"})
    assert cfg.liveness.node_timeout == 2.0
    assert cfg.liveness.status_rate == 3.0
    assert cfg.server.port == 0
    assert base.liveness.node_timeout == 30.0
    assert cfg.replace(events=Config().events).events.retained == 100_000


def test_replace_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        Config().replace(liveness={"node_timout": 2.0})
    assert_names(info.value, "liveness.node_timout")
    with pytest.raises(ConfigError) as info:
        Config().replace(livenes={"node_timeout": 2.0})
    assert_names(info.value, "livenes")
    with pytest.raises(ConfigError) as info:
        Config().replace(scheduling={"strategy": "fast"})
    assert_names(info.value, "scheduling.strategy")


# --- config.example.toml in sync with the dataclasses ----------------------------------------


def dataclass_keys(cfg: Config) -> dict[str, dict[str, object]]:
    """{section: {key: default}} of every key an operator can set."""
    out: dict[str, dict[str, object]] = {}
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        fields = dataclasses.fields(obj)
        out[section.name] = {f.name: getattr(obj, f.name) for f in fields if f.init}
    return out


def test_example_loads_and_equals_defaults() -> None:
    assert Config.from_toml(EXAMPLE) == Config()


def test_example_documents_every_key_and_nothing_else() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    defaults = dataclass_keys(Config())
    assert {s: sorted(keys) for s, keys in example.items()} == {
        s: sorted(keys) for s, keys in defaults.items()
    }
    for section, keys in defaults.items():
        for key, default in keys.items():
            if (section, key) == ("server", "data_dir"):
                assert example[section][key] == ""  # "" = computed at load time, as commented
                continue
            written = default.value if isinstance(default, enum.Enum) else default  # its TOML text
            assert example[section][key] == written, f"{section}.{key}"
            assert type(example[section][key]) is type(written), f"{section}.{key}"


def test_example_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[a-z_]+ *=", line):
            assert lines[i - 1].startswith("# "), f"no comment above: {line}"
