"""Test certificates, generated at test time with `cryptography`: a CA and leaves signed by it.

Every leaf is an EC P-256 key (generating one takes well under a millisecond, RSA takes ~50 ms)
and is written as PEM into a directory the caller owns, so nothing is checked in and nothing
expires in the repository.

    certs = make_certs(tmp_path)
    server_ctx = server_context(certs.valid)
    TlsConfig(ca_file=certs.ca_file)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DNS_NAME = "app.example.test"

_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Leaf:
    """One certificate on disk. `not_after`/`not_before` are what was written into it (UTC)."""

    cert_file: Path
    key_file: Path
    not_before: dt.datetime
    not_after: dt.datetime
    common_name: str


@dataclass(frozen=True)
class Certs:
    ca_file: Path
    valid: Leaf  # for 127.0.0.1, localhost and the DNS name; 90 days
    named: Leaf  # for the DNS name only (the SNI-by-IP case)
    expired: Leaf
    not_yet_valid: Leaf
    wrong_host: Leaf  # for other.example.test only
    self_signed: Leaf  # not signed by the CA, for 127.0.0.1 too
    expiring_3d: Leaf  # inside the default critical band (7 days)
    expiring_10d: Leaf  # inside the default warning band (14 days), outside critical
    client: Leaf  # a client certificate signed by the CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _new_key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: _Key) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, _Key]:
    key = _new_key()
    name = _name("Mamori Test CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _leaf(
    directory: Path,
    stem: str,
    hosts: list[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
    issuer: tuple[x509.Certificate, _Key] | None,
    client: bool = False,
) -> Leaf:
    """A leaf for `hosts`, signed by `issuer` (self-signed when None)."""
    key = _new_key()
    cn = hosts[0]
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(_san(hosts), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    cert_file, key_file = _write(directory, stem, cert, key)
    # Certificates carry whole seconds; keep the values comparable with what a probe reads.
    return Leaf(cert_file, key_file, not_before.replace(microsecond=0), not_after.replace(microsecond=0), cn)


def make_certs(directory: Path, dns_name: str = DEFAULT_DNS_NAME) -> Certs:
    """Write a CA and every leaf into `directory` (which must exist). Takes a few milliseconds."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    day = dt.timedelta(days=1)
    ca = _make_ca(now)
    ca_file, _ = _write(directory, "ca", ca[0], ca[1])
    local = ["127.0.0.1", "localhost", dns_name]
    return Certs(
        ca_file=ca_file,
        valid=_leaf(directory, "valid", local, now - day, now + 90 * day, ca),
        named=_leaf(directory, "named", [dns_name], now - day, now + 90 * day, ca),
        expired=_leaf(directory, "expired", local, now - 30 * day, now - 2 * day, ca),
        not_yet_valid=_leaf(directory, "not_yet_valid", local, now + 2 * day, now + 90 * day, ca),
        wrong_host=_leaf(directory, "wrong_host", ["other.example.test"], now - day, now + 90 * day, ca),
        self_signed=_leaf(directory, "self_signed", local, now - day, now + 90 * day, None),
        expiring_3d=_leaf(directory, "expiring_3d", local, now - day, now + 3 * day, ca),
        expiring_10d=_leaf(directory, "expiring_10d", local, now - day, now + 10 * day, ca),
        client=_leaf(directory, "client", ["mamori-client"], now - day, now + 90 * day, ca, client=True),
    )


def server_context(
    leaf: Leaf,
    *,
    client_ca: Path | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A server-side context presenting `leaf`; with `client_ca`, client certificates are required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert_file, leaf.key_file)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx
