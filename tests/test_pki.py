"""The development PKI: files, modes, idempotence, and certificates that verify as intended.

Chains are checked with cryptography's RFC 5280 verifier, independent of OpenSSL; real TLS
handshakes with these certificates are in test_security.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from scheduler import pki
from scheduler.names import NODE_ID_RULE, valid_instance_id, valid_node_id, valid_trust_domain
from scheduler.pki import PkiError, PkiPaths, init_pki, issue_agent, issue_controller

UUID_NODE = "0F8FAD5B-D9CB-469F-A165-70867728950E"
AGENTS = ("node-1", UUID_NODE, "a..b")  # a..b: a valid node id that is no host name


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki") / "pki", agents=AGENTS)


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def usages(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verifier(paths: PkiPaths) -> PolicyBuilder:
    return PolicyBuilder().store(Store([load(paths.ca)])).time(dt.datetime.now(dt.UTC))


def all_files(paths: PkiPaths) -> list:
    return sorted(p for p in paths.directory.rglob("*") if p.is_file())


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["n", "node-1", "a..b", "-", UUID_NODE, "x" * 253, "1.2.3.4"])
def test_valid_node_ids(text):
    assert valid_node_id(text)


@pytest.mark.parametrize(
    "text", ["", "x" * 254, "node_1", "node 1", "nöde", "a/b", "n\n", "\u212a", None, 42]
)
def test_invalid_node_ids(text):
    assert not valid_node_id(text)  # \u212a: Kelvin sign, folds to "k" under re.IGNORECASE


def test_node_id_rule_names_the_characters():
    assert "253" in NODE_ID_RULE and "a-z" in NODE_ID_RULE


@pytest.mark.parametrize("text", ["i", "instance-my_db-" + UUID_NODE, "Web_1.A-b", "_", "x" * 253])
def test_valid_instance_ids(text):
    assert valid_instance_id(text)  # as the Orka Controller makes them: `_` in names


@pytest.mark.parametrize(
    "text", ["", "x" * 254, "web 1", "wéb", "a/b", "a:b", "n\n", "\u212a", None, 42]
)
def test_invalid_instance_ids(text):
    assert not valid_instance_id(text)


@pytest.mark.parametrize(
    "text,valid",
    [("orka.local", True), ("my_td-1", True), ("Orka.local", False), ("", False), ("a/b", False)],
)
def test_trust_domains(text, valid):
    assert valid_trust_domain(text) is valid


# --- files and modes ---------------------------------------------------------------------------


def test_layout(paths):
    names = {p.relative_to(paths.directory).as_posix() for p in all_files(paths)}
    assert names == {
        "trust_domain",
        "ca.pem",
        "ca.key",
        "scheduler.pem",
        "scheduler.key",
        "controllers/controller.pem",
        "controllers/controller.key",
        *(f"agents/{node}.{ext}" for node in AGENTS for ext in ("pem", "key")),
    }
    assert paths.agent("node-1").cert == paths.directory / "agents" / "node-1.pem"
    assert paths.controller("controller").key == paths.directory / "controllers/controller.key"


def test_private_keys_are_0600_certificates_0644_directories_0700(paths):
    for path in all_files(paths):
        assert mode(path) == (0o600 if path.suffix == ".key" else 0o644), path
    for directory in (paths.directory, paths.directory / "agents", paths.directory / "controllers"):
        assert mode(directory) == 0o700, directory


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_do_not_depend_on_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = init_pki(tmp_path / "pki", agents=("n1",))
    finally:
        os.umask(old)
    assert mode(paths.ca_key) == mode(paths.agent("n1").key) == 0o600
    assert mode(paths.ca) == mode(paths.agent("n1").cert) == 0o644
    assert mode(paths.directory) == mode(paths.directory / "agents") == 0o700


def test_trust_domain_is_recorded(tmp_path):
    paths = init_pki(tmp_path / "pki", trust_domain="prod.example")
    assert (paths.directory / "trust_domain").read_text() == "prod.example\n"
    assert pki.read_trust_domain(paths.directory) == "prod.example"
    assert PkiPaths.load(paths.directory) == paths


def test_missing_pki_is_named(tmp_path):
    with pytest.raises(PkiError, match="certs init"):
        PkiPaths.load(tmp_path)


# --- idempotence -------------------------------------------------------------------------------


def test_init_twice_keeps_the_ca_and_the_certificates(tmp_path):
    first = init_pki(tmp_path / "pki", agents=("n1",))
    before = {p: p.read_bytes() for p in all_files(first)}
    second = init_pki(tmp_path / "pki", agents=("n1", "n2"))
    assert second == first
    assert {p: p.read_bytes() for p in before} == before
    assert second.agent("n2").cert.exists()


def test_init_refuses_another_trust_domain(tmp_path):
    init_pki(tmp_path / "pki")
    with pytest.raises(PkiError, match="'orka.local'.*'other.example'"):
        init_pki(tmp_path / "pki", trust_domain="other.example")


def test_a_lone_ca_key_is_never_overwritten(tmp_path):
    paths = init_pki(tmp_path / "pki")
    key = paths.ca_key.read_bytes()
    paths.ca.unlink()
    with pytest.raises(PkiError, match="ca.pem is missing"):
        init_pki(tmp_path / "pki")
    assert paths.ca_key.read_bytes() == key


def test_a_leaf_from_another_ca_is_reissued(tmp_path):
    paths = init_pki(tmp_path / "pki")
    other = init_pki(tmp_path / "other")
    shutil.copy(other.scheduler.cert, paths.scheduler.cert)
    shutil.copy(other.scheduler.key, paths.scheduler.key)
    init_pki(tmp_path / "pki")
    load(paths.scheduler.cert).verify_directly_issued_by(load(paths.ca))


def test_a_scheduler_certificate_with_other_hosts_is_reissued(tmp_path):
    paths = init_pki(tmp_path / "pki")
    init_pki(tmp_path / "pki", scheduler_hosts=("sched.example",))
    assert "sched.example" in sans(load(paths.scheduler.cert)).get_values_for_type(x509.DNSName)


def test_a_leaf_missing_its_key_is_reissued(tmp_path):
    paths = init_pki(tmp_path / "pki")
    old = paths.scheduler.cert.read_bytes()
    paths.scheduler.key.unlink()
    init_pki(tmp_path / "pki")
    assert paths.scheduler.key.exists() and paths.scheduler.cert.read_bytes() != old


def test_no_temporary_files_are_left(paths):
    assert not [p for p in paths.directory.rglob(".*")]


# --- certificates ------------------------------------------------------------------------------


def test_every_leaf_chains_to_the_ca(paths):
    clients = verifier(paths).build_client_verifier()
    for pair in (
        paths.scheduler,
        paths.controller("controller"),
        *(paths.agent(node) for node in AGENTS),
    ):
        clients.verify(load(pair.cert), [])
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        verifier(paths).build_server_verifier(name).verify(load(paths.scheduler.cert), [])
    agent_as_server = verifier(paths).build_server_verifier(x509.DNSName("node-1"))
    agent_as_server.verify(load(paths.agent("node-1").cert), [])


def test_ca_is_a_p256_ca_for_ten_years(paths):
    ca = load(paths.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.public_key().curve.name == "secp256r1"
    assert ca.signature_hash_algorithm.name == "sha256"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3651)


def test_uri_sans_name_each_identity(paths):
    expected = {
        paths.scheduler.cert: "spiffe://orka.local/scheduler",
        paths.controller("controller").cert: "spiffe://orka.local/controller/controller",
        **{paths.agent(node).cert: f"spiffe://orka.local/agent/{node}" for node in AGENTS},
    }
    for path, uri in expected.items():
        assert sans(load(path)).get_values_for_type(x509.UniformResourceIdentifier) == [uri]


def test_extended_key_usages(paths):
    both = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert usages(load(paths.scheduler.cert)) == both
    assert usages(load(paths.agent("node-1").cert)) == both  # Agents serve WorkloadService
    assert usages(load(paths.controller("controller").cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_scheduler_host_sans(tmp_path, monkeypatch):
    monkeypatch.setattr(pki.socket, "gethostname", lambda: "Build-Host")
    paths = init_pki(tmp_path / "pki", scheduler_hosts=("localhost", "10.0.0.7", "sched.example"))
    names = sans(load(paths.scheduler.cert))
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "sched.example", "build-host"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]


def test_a_machine_name_that_is_no_host_name_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(pki.socket, "gethostname", lambda: "my_box")
    paths = init_pki(tmp_path / "pki", scheduler_hosts=("localhost",))
    assert sans(load(paths.scheduler.cert)).get_values_for_type(x509.DNSName) == ["localhost"]


def test_bad_scheduler_host_is_refused(tmp_path):
    with pytest.raises(PkiError, match="'bad host'"):
        init_pki(tmp_path / "pki", scheduler_hosts=("bad host",))


def test_agent_extra_sans(paths):
    loopbacks = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    node = sans(load(paths.agent("node-1").cert))
    assert node.get_values_for_type(x509.DNSName) == ["node-1"]
    assert node.get_values_for_type(x509.IPAddress) == loopbacks
    uuid = sans(load(paths.agent(UUID_NODE).cert))
    assert uuid.get_values_for_type(x509.DNSName) == [UUID_NODE.lower()]  # DNS: any case
    assert sans(load(paths.agent("a..b").cert)).get_values_for_type(x509.DNSName) == []


def test_leaf_validity_starts_in_the_past_and_lasts_days(tmp_path):
    paths = init_pki(tmp_path / "pki", days=30)
    cert = load(paths.scheduler.cert)
    now = dt.datetime.now(dt.UTC)
    assert now - pki.CLOCK_SKEW - dt.timedelta(seconds=5) <= cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc - now == pytest.approx(
        dt.timedelta(days=30), abs=dt.timedelta(seconds=5)
    )


# --- issuing more ------------------------------------------------------------------------------


def test_issue_agent_and_controller_use_the_existing_ca(tmp_path):
    paths = init_pki(tmp_path / "pki", trust_domain="prod.example")
    ca = paths.ca.read_bytes()
    agent = issue_agent(paths.directory, "node-9")
    controller = issue_controller(paths.directory, "ops", days=7)
    assert paths.ca.read_bytes() == ca
    assert agent == paths.agent("node-9") and controller == paths.controller("ops")
    clients = verifier(paths).build_client_verifier()
    verified = clients.verify(load(agent.cert), [])
    assert x509.UniformResourceIdentifier("spiffe://prod.example/agent/node-9") in verified.subjects
    clients.verify(load(controller.cert), [])
    assert mode(agent.key) == mode(controller.key) == 0o600


def test_issue_agent_replaces_the_pair(tmp_path):
    paths = init_pki(tmp_path / "pki", agents=("n1",))
    old = paths.agent("n1").key.read_bytes()
    issue_agent(paths.directory, "n1")
    assert paths.agent("n1").key.read_bytes() != old


def test_issue_refuses_another_trust_domain(tmp_path):
    paths = init_pki(tmp_path / "pki")
    with pytest.raises(PkiError, match="'orka.local', not 'x.example'"):
        issue_agent(paths.directory, "n1", trust_domain="x.example")


def test_issue_needs_an_existing_pki(tmp_path):
    with pytest.raises(PkiError, match="missing"):
        issue_controller(tmp_path, "ops")


@pytest.mark.parametrize("name", ["", "node_1", "../x", "x" * 254])
def test_invalid_names_are_refused_with_the_rule(tmp_path, name):
    with pytest.raises(PkiError, match="expected 1-253 characters"):
        init_pki(tmp_path / "pki", agents=(name,))
    with pytest.raises(PkiError, match="invalid controller name"):
        init_pki(tmp_path / "pki", controllers=(name,))
    assert not (tmp_path / "pki").exists()  # refused before anything was written


def test_invalid_trust_domain_is_refused(tmp_path):
    with pytest.raises(PkiError, match="invalid trust domain"):
        init_pki(tmp_path / "pki", trust_domain="Orka Local")


def test_long_node_ids_fit(tmp_path):
    node = "n" * 251  # longer than the 64 characters a CN may hold; the file name is 255
    paths = init_pki(tmp_path / "pki", agents=(node,))
    cert = load(paths.agent(node).cert)
    assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://orka.local/agent/{node}"
    ]


def test_node_ids_too_long_for_a_file_name_are_refused(tmp_path):
    with pytest.raises(PkiError, match="too long for a file name"):
        init_pki(tmp_path / "pki", agents=("n" * 252,))
