"""The check of configured TLS files (`tls_setup.configured_files`), shared by `serve` and
`check-config`: every problem names the key (`tls.cert`) and the path.

Files are real PEM files: a development PKI from `scheduler.pki`, and certificates made here
with cryptography when a validity period or an encrypted key is needed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scheduler.config import Config, ConfigError
from scheduler.pki import init_pki
from scheduler.tls_setup import TlsFiles, configured_files

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return init_pki(tmp_path_factory.mktemp("pki") / "pki").directory


def config(ca: Path, cert: Path, key: Path) -> Config:
    return Config.from_mapping({"tls": {"ca": str(ca), "cert": str(cert), "key": str(key)}})


def problem(ca: Path, cert: Path, key: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        configured_files(config(ca, cert, key))
    return info.value


def self_signed(
    directory: Path,
    not_before: dt.datetime,
    not_after: dt.datetime,
    *,
    passphrase: bytes | None = None,
) -> tuple[Path, Path]:
    """A certificate valid from `not_before` to `not_after`, and its key (encrypted if asked)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    cert_path, key_path = directory / "leaf.pem", directory / "leaf.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert_path, key_path


def test_usable_files_are_returned(pki):
    files = configured_files(config(pki / "ca.pem", pki / "scheduler.pem", pki / "scheduler.key"))
    assert files == TlsFiles(pki / "ca.pem", pki / "scheduler.pem", pki / "scheduler.key")


def test_no_tls_paths_means_the_development_pki():
    assert configured_files(Config()) is None


@pytest.mark.parametrize("missing", ["tls.ca", "tls.cert", "tls.key"])
def test_a_missing_file_names_its_key_and_path(pki, tmp_path, missing):
    files = {
        "tls.ca": pki / "ca.pem",
        "tls.cert": pki / "scheduler.pem",
        "tls.key": pki / "scheduler.key",
    }
    files[missing] = tmp_path / "absent.pem"
    err = problem(*files.values())
    assert err.key == missing
    assert str(err) == f"{missing}: {tmp_path / 'absent.pem'}: no such file"


def test_a_directory_is_not_readable_as_a_file(pki, tmp_path):
    err = problem(tmp_path, pki / "scheduler.pem", pki / "scheduler.key")
    assert str(err).startswith(f"tls.ca: {tmp_path}: cannot read: "), str(err)


def test_files_that_are_not_pem(pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert str(problem(junk, pki / "scheduler.pem", pki / "scheduler.key")) == (
        f"tls.ca: {junk} holds no PEM certificate"
    )
    assert str(problem(pki / "ca.pem", junk, pki / "scheduler.key")) == (
        f"tls.cert: {junk} holds no PEM certificate"
    )
    assert str(problem(pki / "ca.pem", pki / "scheduler.pem", junk)) == (
        f"tls.key: {junk} holds no PEM private key"
    )
    # A certificate where the key should be: a common slip.
    assert str(problem(pki / "ca.pem", pki / "scheduler.pem", pki / "scheduler.pem")) == (
        f"tls.key: {pki / 'scheduler.pem'} holds no PEM private key"
    )


def test_a_key_that_is_not_the_certificates(pki):
    err = problem(pki / "ca.pem", pki / "scheduler.pem", pki / "ca.key")
    assert err.key == "tls.key"
    assert str(err) == (
        f"tls.key: {pki / 'ca.key'} is not the private key of tls.cert ({pki / 'scheduler.pem'})"
    )


def test_an_encrypted_key_is_refused(pki, tmp_path):
    cert, key = self_signed(
        tmp_path, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1), passphrase=b"secret"
    )
    err = problem(pki / "ca.pem", cert, key)
    assert err.key == "tls.key" and f"{key} is encrypted" in str(err), str(err)


def test_an_expired_certificate(pki, tmp_path):
    ended = dt.datetime(2024, 5, 6, 7, 8, tzinfo=dt.UTC)
    cert, key = self_signed(tmp_path, ended - dt.timedelta(days=30), ended)
    assert str(problem(pki / "ca.pem", cert, key)) == (
        f"tls.cert: {cert} expired on 2024-05-06 07:08 UTC"
    )


def test_a_certificate_not_valid_yet(pki, tmp_path):
    starts = (NOW + dt.timedelta(days=2)).replace(second=0, microsecond=0)
    cert, key = self_signed(tmp_path, starts, starts + dt.timedelta(days=30))
    err = problem(pki / "ca.pem", cert, key)
    assert str(err) == (
        f"tls.cert: {cert} is not valid before {starts:%Y-%m-%d %H:%M} UTC "
        "(is this machine's clock right?)"
    )
