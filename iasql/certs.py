"""The server's own TLS certificates: a CA made at the first start, and a server certificate it
signs for the names clients use, kept in the data directory."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "tls"
CA_CERT, CA_KEY = "ca.crt", "ca.key"  # ca.crt is what clients give as sslrootcert
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
CA_DAYS = 3650
SERVER_DAYS = 397  # the longest that browsers' and some TLS stacks' rules still accept
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ServerCertificate:
    cert: Path
    key: Path
    ca: Path | None  # None when the certificate was given (--tls-cert)


def names_for(*hosts: str) -> list[str]:
    """The names the server certificate covers: the listen and advertised hosts (a wildcard
    listen address stands for this machine's names), localhost and loopback."""
    names: list[str] = []
    for host in hosts:
        if host in ("", "0.0.0.0", "::"):
            names += [socket.gethostname(), socket.getfqdn()]
        else:
            names.append(host)
    names += ["localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def ensure_certificate(data_dir: Path, names: Iterable[str]) -> ServerCertificate:
    """DATA_DIR/tls/: the CA (made once, then kept: clients trust it) and a server certificate
    for `names`. The server certificate is made again, by the same CA, when a name is missing
    from it (a new --host or --advertise) or it expires within 30 days."""
    folder = data_dir / TLS_DIR
    folder.mkdir(mode=0o711, parents=True, exist_ok=True)
    wanted = list(names)
    ca_cert_path, ca_key_path = folder / CA_CERT, folder / CA_KEY
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path}: expected the EC key iasql made")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key)
        _write(ca_key_path, _key_pem(ca_key), 0o600)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        (folder / SERVER_CERT).unlink(missing_ok=True)  # signed by a CA that is gone
    cert_path, key_path = folder / SERVER_CERT, folder / SERVER_KEY
    if not (key_path.exists() and _still_good(cert_path, ca_cert, wanted)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _server_certificate(key, ca_key, ca_cert, wanted)
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ServerCertificate(cert_path, key_path, ca_cert_path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iasql"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"iasql local CA ({socket.gethostname()})"),
        ]
    )
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
) -> x509.Certificate:
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(
            min(now + datetime.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc)
        )
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    found: list[x509.GeneralName] = []
    for name in names:
        try:
            found.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            found.append(x509.DNSName(name))
    return found


def _still_good(path: Path, ca_cert: x509.Certificate, names: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if cert.issuer != ca_cert.subject or cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(str(g.value) in have for g in _general_names(names))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replaces `path` whole (a crash leaves the old file or the new one), with `mode`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
