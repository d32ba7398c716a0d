"""`orka-scheduler` as an operator runs it: `python -m scheduler` in a subprocess (SPEC §3).

`serve` with no TLS paths creates the development PKI in its data directory and says where,
serves Controllers over mTLS with the generated certificate, reloads its certificate on SIGHUP
and exits 0 on SIGTERM; `--insecure` warns loudly; `certs init` / `certs issue` write the PKI;
`check-config` names the key at fault.

Each server listens on 127.0.0.1:0 and the test reads the bound port from its log, so no port
is guessed. The subprocess runs from the repository root with it on PYTHONPATH (so it also
works when the package is installed), with STATE_DIRECTORY in tmp_path.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from scheduler._proto import agent_pb2, controller_pb2
from scheduler.security import client_ssl_context

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 15.0  # s: interpreter start, imports, PKI creation (EC keys: milliseconds)
STOP_TIMEOUT = 5.0  # s: SIGTERM to exit, with shutdown_grace = 1 s
CALL_TIMEOUT = 5.0  # s: every grpcio call
LISTENING = re.compile(r"listening on \S+ port (\d+) \((TLS|PLAINTEXT)")

CONFIG = """\
[server]
listen = "127.0.0.1:0"
shutdown_grace = 1.0

[observability]
http_listen = ""
"""


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["STATE_DIRECTORY"] = str(tmp_path / "state")
    env.pop("NOTIFY_SOCKET", None)  # not under systemd here
    return env


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        cwd=REPO,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


class Served:
    """`python -m scheduler serve ...` running; its log lines collected as they come."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        config = tmp_path / "scheduler.toml"
        if not config.exists():
            config.write_text(CONFIG)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "serve", "--config", str(config), *args],
            cwd=REPO,
            env=cli_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._eof = False  # the process closed its output (it has exited)
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.port = int(self.wait_for(LISTENING).group(1))
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(
        self, pattern: re.Pattern | str, timeout: float = START_TIMEOUT, after: int = 0
    ) -> re.Match:
        """The first log line (from index `after`) matching `pattern`, waiting for it."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    match = pattern.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    log = "\n".join(self.lines)
                    raise AssertionError(
                        f"no log line matching {pattern.pattern!r} "
                        f"(exit code {self.process.poll()}); log:\n{log}"
                    )
                self._changed.wait(remaining)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM; the exit code (the test fails if it takes longer than STOP_TIMEOUT)."""
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(
                f"no exit within {STOP_TIMEOUT} s of SIGTERM; log:\n{self.log}"
            ) from err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def served(tmp_path):
    """Start `serve` with the given arguments; whatever is still running is killed at the end."""
    running: list[Served] = []

    def start(*args: str) -> Served:
        server = Served(tmp_path, *args)
        running.append(server)
        return server

    yield start
    for server in running:
        server.kill()


# --- clients -----------------------------------------------------------------------------------


def secure_channel(port: int, pki: Path, cert: Path, key: Path) -> grpc.Channel:
    """grpcio over mTLS: trusts the generated CA and checks the scheduler's SAN (127.0.0.1)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    return grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)]
    )


def list_nodes(channel: grpc.Channel) -> list[str]:
    call = channel.unary_unary(
        "/scheduler.controller.ClusterService/ListNodes",
        request_serializer=controller_pb2.Empty.SerializeToString,
        response_deserializer=controller_pb2.NodeList.FromString,
    )
    return [node.id for node in call(controller_pb2.Empty(), timeout=CALL_TIMEOUT).nodes]


def join(channel: grpc.Channel, node_id: str) -> None:
    call = channel.unary_unary(
        "/scheduler.agent.LifecycleService/JoinCluster",
        request_serializer=agent_pb2.ConnectionRequest.SerializeToString,
        response_deserializer=agent_pb2.Empty.FromString,
    )
    call(agent_pb2.ConnectionRequest(id=node_id, port=7000), timeout=CALL_TIMEOUT)


def served_serial(port: int, pki: Path) -> int:
    """The serial of the certificate the scheduler presents to a new connection."""
    controller = pki / "controllers"
    context = client_ssl_context(
        pki / "ca.pem", controller / "controller.pem", controller / "controller.key"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# --- serve -------------------------------------------------------------------------------------


def test_serve_creates_the_pki_and_serves_controllers_over_mtls(tmp_path, served):
    pki = tmp_path / "state" / "pki"
    server = served()
    assert LISTENING.search(server.log).group(2) == "TLS", server.log
    where = server.wait_for("development PKI in")
    assert "created a development PKI" in where.string and str(pki) in where.string, where.string
    assert str(pki / "controllers" / "controller.pem") in where.string, where.string

    for key in ("ca.key", "scheduler.key", "controllers/controller.key"):
        assert mode(pki / key) == 0o600, f"{key} is {oct(mode(pki / key))}"
    assert mode(pki) == 0o700

    controller = pki / "controllers"
    with secure_channel(
        server.port, pki, controller / "controller.pem", controller / "controller.key"
    ) as channel:
        assert list_nodes(channel) == []

        # The log's advice works: issue an Agent certificate from the running PKI, and join.
        issued = run_cli(tmp_path, "certs", "issue", "agent", "node-1", "--dir", str(pki))
        assert issued.returncode == 0, issued.stderr
        agents = pki / "agents"
        with secure_channel(
            server.port, pki, agents / "node-1.pem", agents / "node-1.key"
        ) as agent:
            join(agent, "node-1")
        assert list_nodes(channel) == ["node-1"]

        # A client without a certificate is refused; the controller is not disturbed.
        no_cert = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        with grpc.secure_channel(
            f"127.0.0.1:{server.port}", no_cert, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as anonymous:
            with pytest.raises(grpc.RpcError) as refused:
                list_nodes(anonymous)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert list_nodes(channel) == ["node-1"]

    assert server.stop() == 0, server.log
    server.wait_for(r"\bstopped\b")  # after the drain: a clean exit, not a kill


def test_serve_reuses_its_pki_and_reloads_on_sighup(tmp_path, served):
    pki = tmp_path / "state" / "pki"
    first = served()
    assert first.stop() == 0, first.log
    ca = (pki / "ca.pem").read_bytes()
    scheduler_serial = serial_of(pki / "scheduler.pem")

    server = served()
    assert "using the development PKI" in server.wait_for("development PKI in").string
    assert (pki / "ca.pem").read_bytes() == ca, "a second start replaced the CA"
    assert served_serial(server.port, pki) == scheduler_serial

    controller = pki / "controllers"
    with secure_channel(
        server.port, pki, controller / "controller.pem", controller / "controller.key"
    ) as channel:
        assert list_nodes(channel) == []  # a connection made before the reload

        # Rotation: remove the scheduler's pair; SIGHUP re-runs the PKI setup (a new pair).
        (pki / "scheduler.pem").unlink()
        (pki / "scheduler.key").unlink()
        mark = len(server.lines)
        server.signal(signal.SIGHUP)
        server.wait_for("SIGHUP: reloaded", after=mark)
        rotated = serial_of(pki / "scheduler.pem")
        assert rotated != scheduler_serial
        assert served_serial(server.port, pki) == rotated
        assert list_nodes(channel) == []  # the earlier connection still works

    assert server.stop() == 0, server.log


def test_sighup_with_broken_certificates_keeps_serving(tmp_path, served):
    """tls_setup.reload_on_sighup promises: a bad file is logged and the running material kept."""
    pki = tmp_path / "state" / "pki"
    server = served()
    serial = served_serial(server.port, pki)
    (pki / "ca.key").rename(pki / "ca.key.moved")  # the CA's key lost: the PKI is unusable
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_for("SIGHUP|Traceback", after=mark)
    time.sleep(0.3)  # a crash ends the process right after its last line
    assert server.process.poll() is None and "Traceback" not in server.log, (
        "BUG scheduler/tls_setup.py reload_on_sighup: with the development PKI, tls_files() "
        "re-runs pki.init_pki, whose PkiError is not caught (only TlsSetupError is), so one "
        "SIGHUP with a broken PKI kills the scheduler; catch pki.PkiError too (log it, keep "
        "the current certificates). Log:\n" + server.log
    )
    assert "ca.key" in server.log[server.log.index("SIGHUP") :], "the refusal names no file"
    assert served_serial(server.port, pki) == serial
    assert server.stop() == 0, server.log


def test_sighup_with_a_configured_key_that_no_longer_matches_keeps_serving(tmp_path, served):
    """The check of configured files runs on SIGHUP too: refused, logged by key, still serving."""
    made = run_cli(tmp_path, "certs", "init", str(tmp_path / "pki"))
    assert made.returncode == 0, made.stderr
    pki = tmp_path / "pki"
    key = tmp_path / "scheduler.key"
    key.write_bytes((pki / "scheduler.key").read_bytes())
    (tmp_path / "scheduler.toml").write_text(
        CONFIG + f'\n[tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / "scheduler.pem"}"\n'
        f'key = "{key}"\n'
    )
    server = served()
    serial = served_serial(server.port, pki)
    key.write_bytes((pki / "ca.key").read_bytes())  # a botched rotation: another key
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    refused = server.wait_for("SIGHUP|Traceback", after=mark).string
    assert "certificates NOT reloaded" in refused, server.log
    assert f"tls.key: {key} is not the private key of tls.cert" in refused, refused
    time.sleep(0.3)  # a crash ends the process right after its last line
    assert server.process.poll() is None, server.log
    assert served_serial(server.port, pki) == serial
    assert server.stop() == 0, server.log


def test_serve_insecure_warns_loudly(tmp_path, served):
    server = served("--insecure")
    assert LISTENING.search(server.log).group(2) == "PLAINTEXT", server.log
    warning = server.wait_for("RUNNING WITHOUT TLS").string
    assert "WARNING" in warning and "--insecure" in warning, warning
    assert "no identity is checked" in warning
    assert not (tmp_path / "state" / "pki").exists(), "--insecure made a PKI"
    with grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        assert list_nodes(channel) == []
    assert server.stop() == 0, server.log


@pytest.mark.parametrize("problem", ["missing TLS files", "PKI of another trust domain"])
def test_serve_with_unusable_tls_material_fails_with_a_message(tmp_path, problem):
    """An operator error in [tls]: one line saying what is wrong, not a traceback."""
    config = tmp_path / "bad-tls.toml"
    if problem == "missing TLS files":
        missing = tmp_path / "missing"
        config.write_text(
            CONFIG + f'\n[tls]\nca = "{missing}/ca.pem"\n'
            f'cert = "{missing}/s.pem"\nkey = "{missing}/s.key"\n'
        )
        expected = f"{missing}/ca.pem"
    else:  # the data directory's development PKI was made for orka.local
        made = run_cli(tmp_path, "certs", "init", str(tmp_path / "state" / "pki"))
        assert made.returncode == 0, made.stderr
        config.write_text(CONFIG + '\n[tls]\ntrust_domain = "other.local"\n')
        expected = "other.local"
    result = run_cli(tmp_path, "serve", "--config", str(config))
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, (
        "BUG scheduler/cli.py cmd_serve: `server_tls(config)` is called outside any try, so "
        "security.TlsSetupError (unloadable [tls] files) and pki.PkiError (development PKI "
        "unusable) escape as a traceback; catch both and print 'orka-scheduler: <message>' to "
        "stderr with a non-zero exit, as for ConfigError:\n" + result.stderr
    )


def test_serve_with_a_bad_config_names_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\n\n[scheduling]\nstrategy = "random"\n')
    result = run_cli(tmp_path, "serve", "--config", str(config))
    assert result.returncode == 2
    assert "scheduling.strategy" in result.stderr, result.stderr


# --- certs -------------------------------------------------------------------------------------


def test_certs_init_and_issue(tmp_path):
    directory = tmp_path / "pki"
    result = run_cli(tmp_path, "certs", "init", str(directory), "--agent", "a1")
    assert result.returncode == 0, result.stderr
    expected = [
        "ca.pem",
        "ca.key",
        "scheduler.pem",
        "scheduler.key",
        "trust_domain",
        "agents/a1.pem",
        "agents/a1.key",
        "controllers/controller.pem",
        "controllers/controller.key",
    ]
    for name in expected:
        assert (directory / name).is_file(), f"certs init did not create {name}"
    for name in expected:
        if name.endswith(".key"):
            assert mode(directory / name) == 0o600, f"{name} is {oct(mode(directory / name))}"
    assert str(directory / "agents" / "a1.pem") in result.stdout, result.stdout

    result = run_cli(tmp_path, "certs", "issue", "agent", "a2", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((directory / "agents" / "a2.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    uris = cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://orka.local/agent/a2"]
    assert mode(directory / "agents" / "a2.key") == 0o600

    result = run_cli(tmp_path, "certs", "issue", "controller", "ops", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    assert (directory / "controllers" / "ops.pem").is_file()
    assert result.stdout == (
        f"issued controller ops:\n  {directory / 'controllers' / 'ops.pem'}"
        f"\n  {directory / 'controllers' / 'ops.key'}\n"
    )


def test_certs_issue_without_a_pki_fails_with_a_message(tmp_path):
    result = run_cli(tmp_path, "certs", "issue", "agent", "a2", "--dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "orka-scheduler:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "none" / "agents" / "a2.pem").exists()


# --- check-config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ('[scheduling]\nstrategy = "random"\n', "scheduling.strategy"),
        ('[server]\nlisen = "127.0.0.1:50051"\n', "server.lisen"),
        ('[tls]\nca = "/etc/orka/ca.pem"\n', "tls.cert"),
        ("[liveness]\nnode_timeout = -1\n", "liveness.node_timeout"),
        ("[server]\nmax_connections = 1\n", "server.max_connections"),
    ],
)
def test_check_config_names_the_bad_key(tmp_path, text, key):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli(tmp_path, "check-config", str(config))
    assert result.returncode != 0
    assert key in result.stderr, result.stderr


def test_check_config_accepts_a_good_file(tmp_path):
    config = tmp_path / "good.toml"
    config.write_text(CONFIG)
    result = run_cli(tmp_path, "check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize(
    "problem", ["missing certificate", "key of another certificate", "expired certificate"]
)
def test_check_config_and_serve_name_the_tls_key_and_file(tmp_path, problem):
    """One check for both: check-config refuses what serve would refuse, with the same words."""
    from tests.test_tls_files import self_signed

    made = run_cli(tmp_path, "certs", "init", str(tmp_path / "pki"))
    assert made.returncode == 0, made.stderr
    pki = tmp_path / "pki"
    ca, cert, key = pki / "ca.pem", pki / "scheduler.pem", pki / "scheduler.key"
    if problem == "missing certificate":
        cert = tmp_path / "nowhere" / "scheduler.pem"
        expected = f"tls.cert: {cert}: no such file"
    elif problem == "key of another certificate":
        key = pki / "controllers" / "controller.key"
        expected = f"tls.key: {key} is not the private key of tls.cert ({cert})"
    else:
        ended = datetime.datetime(2025, 1, 2, 3, 4, tzinfo=datetime.UTC)
        cert, key = self_signed(tmp_path, ended - datetime.timedelta(days=9), ended)
        expected = f"tls.cert: {cert} expired on 2025-01-02 03:04 UTC"
    config = tmp_path / "tls.toml"
    config.write_text(CONFIG + f'\n[tls]\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n')

    checked = run_cli(tmp_path, "check-config", str(config))
    assert checked.returncode == 1, checked.stdout
    assert checked.stderr == f"{config}: {expected}\n"

    served = run_cli(tmp_path, "serve", "--config", str(config))
    assert served.returncode == 2
    assert served.stderr == f"orka-scheduler: bad configuration: {config}: {expected}\n"


@pytest.mark.parametrize("problem", ["missing CA", "key of another certificate"])
def test_check_config_and_serve_name_the_etcd_tls_key_and_file(tmp_path, problem):
    made = run_cli(tmp_path, "certs", "init", str(tmp_path / "pki"))
    assert made.returncode == 0, made.stderr
    pki = tmp_path / "pki"
    ca, cert, key = (
        pki / "ca.pem",
        pki / "controllers" / "controller.pem",
        pki / "controllers" / "controller.key",
    )
    if problem == "missing CA":
        ca = tmp_path / "nowhere" / "etcd-ca.pem"
        expected = f"etcd.ca: {ca}: no such file"
    else:
        key = pki / "scheduler.key"
        expected = f"etcd.key: {key} is not the private key of etcd.cert ({cert})"
    config = tmp_path / "etcd.toml"
    config.write_text(
        CONFIG + '\n[store]\nbackend = "etcd"\n[etcd]\n'
        f'endpoints = ["https://127.0.0.1:2379"]\nca = "{ca}"\ncert = "{cert}"\n'
        f'key = "{key}"\n'
    )

    checked = run_cli(tmp_path, "check-config", str(config))
    assert checked.returncode == 1, checked.stdout
    assert checked.stderr == f"{config}: {expected}\n"

    served = run_cli(tmp_path, "serve", "--insecure", "--config", str(config))
    assert served.returncode == 2
    assert served.stderr == f"orka-scheduler: bad configuration: {config}: {expected}\n"


def test_a_toml_syntax_error_names_the_file_once(tmp_path):
    config = tmp_path / "syntax.toml"
    config.write_text("[server\n")
    checked = run_cli(tmp_path, "check-config", str(config))
    served = run_cli(tmp_path, "serve", "--config", str(config))
    assert (checked.returncode, served.returncode) == (1, 2)
    assert checked.stderr.startswith(f"{config}: not valid TOML: "), checked.stderr
    assert served.stderr.startswith(
        f"orka-scheduler: bad configuration: {config}: not valid TOML: "
    ), served.stderr
    for stderr in (checked.stderr, served.stderr):
        assert stderr.count("syntax.toml") == 1 and len(stderr.splitlines()) == 1, stderr


def test_a_bad_key_is_named_with_its_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[scheduling]\nstrategy = "random"\n')
    checked = run_cli(tmp_path, "check-config", str(config))
    assert checked.stderr.startswith(f"{config}: scheduling.strategy: must be "), checked.stderr


# --- the command line itself ---------------------------------------------------------------------


def test_version_is_the_installed_packages():
    from importlib import metadata

    result = subprocess.run(
        [sys.executable, "-m", "scheduler", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"orka-scheduler {metadata.version('orka-scheduler')}\n"


def subcommands(parser=None, path=()):
    """(command path, its parser) for every command and subcommand of `orka-scheduler`."""
    import argparse

    from scheduler.cli import parser as cli_parser

    parser = parser or cli_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subcommands(sub, (*path, name))


def test_every_argument_of_every_command_has_help():
    import argparse

    missing = [
        (" ".join(path), action.dest)
        for path, sub in subcommands()
        for action in sub._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and not action.help
    ]
    assert missing == []
    commands = [" ".join(path) for path, _ in subcommands()]
    assert {"serve", "check-config", "nodes", "watch", "demo", "certs init", "certs issue"} <= set(
        commands
    ), commands


def test_serve_help_says_where_data_dir_defaults_to(tmp_path):
    result = run_cli(tmp_path, "serve", "--help")
    assert result.returncode == 0, result.stderr
    example = (REPO / "config.example.toml").read_text()
    for place in (
        "$STATE_DIRECTORY",
        "$XDG_STATE_HOME/orka-scheduler",
        "~/.local/state/orka-scheduler",
    ):
        assert place in result.stdout and place in example, place
    # and where that is for this run (cli_env sets STATE_DIRECTORY)
    assert f"here: {tmp_path / 'state'}" in result.stdout, result.stdout
