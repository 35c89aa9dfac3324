"""TLS settings: the context the proxy serves clients with, and the one it reaches the backing
Postgres with, read from the backend URL's sslmode the way libpq reads it."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class TlsConfigError(Exception):
    """A TLS setting that cannot work: one line for the user."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The context for clients: TLS 1.2 or newer (as Postgres's ssl_min_protocol_version)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["postgresql"])  # as Postgres 17: libpq 17 offers it
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot use the certificate {cert} with the key {key}: {exc}"
        ) from exc
    return context


@dataclass(frozen=True)
class BackendTls:
    """How to speak TLS to the backing Postgres: `context` None means plaintext."""

    mode: str
    context: ssl.SSLContext | None
    # prefer and allow carry on in plaintext when the server answers 'N'; the others fail.
    required: bool


def backend_tls(dsn: str) -> BackendTls:
    """The backend URL's sslmode, sslrootcert, sslcert and sslkey (else PGSSLMODE and friends,
    as asyncpg and libpq read them), as a client context. No sslmode means prefer: libpq's and
    asyncpg's default, so the proxy's connections match the engine's own."""
    query = {k: v[-1] for k, v in parse_qs(urlsplit(dsn).query).items()}

    def setting(name: str) -> str | None:
        return query.get(name) or os.environ.get(f"PG{name.upper()}") or None

    mode = setting("sslmode") or "prefer"
    if mode not in SSL_MODES:
        raise TlsConfigError(f"sslmode {mode!r} in the backend URL: expected one of {SSL_MODES}")
    if mode == "disable":
        return BackendTls(mode, None, required=False)
    root = setting("sslrootcert")
    verify = mode in ("verify-ca", "verify-full") or (mode == "require" and root is not None)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = mode == "verify-full"
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        if root == "system":
            context.load_default_certs()
        else:
            path = Path(root) if root else Path.home() / ".postgresql" / "root.crt"
            try:
                context.load_verify_locations(cafile=path)
            except (OSError, ssl.SSLError) as exc:
                raise TlsConfigError(
                    f"sslmode={mode} needs the backing Postgres's CA: cannot read {path}"
                    f" ({exc}); set sslrootcert in the backend URL"
                ) from exc
    else:
        context.verify_mode = ssl.CERT_NONE
    cert, key = setting("sslcert"), setting("sslkey")
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"cannot use the client certificate {cert}: {exc}") from exc
    return BackendTls(mode, context, required=mode not in ("allow", "prefer"))
