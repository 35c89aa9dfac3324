"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as pure functions: the server side the proxy answers
clients with, and the client side it authenticates to the backing Postgres with.

The proxy never knows a password. It checks a client's proof against the role's stored
verifier (`pg_authid.rolpassword`: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`).
The proof reveals the ClientKey (ClientProof XOR HMAC(StoredKey, AuthMessage)), and the
backing Postgres accepts a proof computed from that ClientKey, since all it checks is
H(ClientKey) == StoredKey. This is PgBouncer's SCRAM pass-through. Channel binding
(SCRAM-SHA-256-PLUS) is not offered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import unicodedata
from dataclasses import dataclass

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096  # Postgres's scram_iterations default
_GS2_HEADERS = {"n,,": "biws", "y,,": "eSws"}  # the gs2 headers without channel binding, in c=


class ScramError(Exception):
    """A SCRAM message the server cannot accept: the login ends with this SQLSTATE."""

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes
    doomed: bool = False  # a stand-in for an unknown role: no proof is ever accepted


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ScramError("malformed SCRAM message (invalid base64)") from exc


def parse_verifier(text: str | None) -> Verifier | None:
    """pg_authid.rolpassword as a SCRAM verifier; None for an MD5 hash, a plain password or
    no password at all."""
    if not text or not text.startswith(f"{MECHANISM}$"):
        return None
    try:
        _, params, keys = text.split("$")
        iterations, salt = params.split(":")
        stored, server = keys.split(":")
        verifier = Verifier(
            int(iterations),
            base64.b64decode(salt, validate=True),
            base64.b64decode(stored, validate=True),
            base64.b64decode(server, validate=True),
        )
    except (ValueError, binascii.Error):
        return None
    if verifier.iterations < 1 or len(verifier.stored_key) != 32 or len(verifier.server_key) != 32:
        return None
    return verifier


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(Normalize(password), salt, i). Normalize is SASLprep's NFKC step, which is all it
    does to the passwords the tests use (libpq falls back to the raw bytes where SASLprep fails)."""
    prepared = unicodedata.normalize("NFKC", password).encode()
    return hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)


def client_key_of(password: str, salt: bytes, iterations: int) -> bytes:
    return _hmac(salted_password(password, salt, iterations), b"Client Key")


def make_verifier(password: str, salt: bytes, iterations: int = ITERATIONS) -> Verifier:
    salted = salted_password(password, salt, iterations)
    stored = _h(_hmac(salted, b"Client Key"))
    return Verifier(iterations, salt, stored, _hmac(salted, b"Server Key"))


def format_verifier(verifier: Verifier) -> str:
    """As Postgres stores it in pg_authid.rolpassword."""
    return (
        f"{MECHANISM}${verifier.iterations}:{_b64(verifier.salt)}"
        f"${_b64(verifier.stored_key)}:{_b64(verifier.server_key)}"
    )


def mock_verifier(user: str, secret: bytes) -> Verifier:
    """What an unknown role is challenged with, as Postgres does: the salt depends only on the
    name and a server secret, so repeated attempts see the same one as for a real role, and
    the login fails only at the proof, with the same message."""
    salt = _hmac(secret, b"salt:" + user.encode())[:16]
    key = _hmac(secret, b"key:" + user.encode())
    return Verifier(ITERATIONS, salt, key, key, doomed=True)


# --- the server side ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerFirst:
    """The exchange after the client-first message: what the final step checks against."""

    gs2_header: str
    client_first_bare: str
    nonce: str  # the client's nonce followed by the server's
    message: str  # server-first-message, sent as AuthenticationSASLContinue


def _attributes(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise ScramError("malformed SCRAM message (expected attribute=value)")
        pairs.append((part[0], part[2:]))
    return pairs


def _decode(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ScramError("malformed SCRAM message (not UTF-8)") from exc


def _printable_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def server_first(verifier: Verifier, client_first: bytes, server_nonce: str) -> ServerFirst:
    """Reads the client-first-message (`gs2-header client-first-bare`); returns the
    server-first-message `r=<nonce>,s=<salt>,i=<iterations>` and what the final step needs.
    As in Postgres, the user name in `n=` is ignored: the startup packet names the role."""
    text = _decode(client_first)
    flag, comma, rest = text.partition(",")
    if not comma:
        raise ScramError("malformed SCRAM message (no gs2 header)")
    if flag.startswith("p="):
        raise ScramError(
            "the client selected SCRAM-SHA-256 without channel binding,"
            " but the SCRAM message includes channel binding data"
        )
    if flag not in ("n", "y"):
        raise ScramError(f"malformed SCRAM message (unexpected channel-binding flag {flag!r})")
    authzid, comma, bare = rest.partition(",")
    if not comma:
        raise ScramError("malformed SCRAM message (no gs2 header)")
    if authzid:
        raise ScramError("client uses authorization identity, but it is not supported", "0A000")
    attributes = _attributes(bare)
    if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
        raise ScramError("malformed SCRAM message (expected n= and r=)")
    if any(key == "m" for key, _ in attributes):
        raise ScramError("client requires an unsupported SCRAM extension", "0A000")
    client_nonce = attributes[1][1]
    if not _printable_nonce(client_nonce):
        raise ScramError("malformed SCRAM message (invalid nonce)")
    nonce = client_nonce + server_nonce
    message = f"r={nonce},s={_b64(verifier.salt)},i={verifier.iterations}"
    return ServerFirst(f"{flag},,", bare, nonce, message)


@dataclass(frozen=True)
class Verified:
    client_key: bytes  # what the client's proof revealed: enough to log in to the backend
    server_final: str  # `v=<ServerSignature>`, sent as AuthenticationSASLFinal


def verify_client_final(
    verifier: Verifier, exchange: ServerFirst, client_final: bytes
) -> Verified | None:
    """Checks the client-final-message `c=...,r=...,p=<proof>`: None when the proof is wrong
    (a wrong password), ScramError when the message itself is."""
    text = _decode(client_final)
    without_proof, sep, proof_text = text.rpartition(",p=")
    if not sep:
        raise ScramError("malformed SCRAM message (no proof)")
    attributes = _attributes(without_proof)
    if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
        raise ScramError("malformed SCRAM message (expected c= and r=)")
    if attributes[0][1] != _GS2_HEADERS[exchange.gs2_header]:
        raise ScramError("SCRAM channel binding check failed")
    if attributes[1][1] != exchange.nonce:
        raise ScramError("SCRAM nonce mismatch")
    proof = _unb64(proof_text)
    if len(proof) != 32:
        raise ScramError("malformed SCRAM message (invalid proof length)")
    auth_message = f"{exchange.client_first_bare},{exchange.message},{without_proof}".encode()
    client_key = _xor(proof, _hmac(verifier.stored_key, auth_message))
    if not hmac.compare_digest(_h(client_key), verifier.stored_key) or verifier.doomed:
        return None
    signature = _hmac(verifier.server_key, auth_message)
    return Verified(client_key, f"v={_b64(signature)}")


# --- the client side ------------------------------------------------------------------------


def client_first(nonce: str) -> tuple[str, str]:
    """(client-first-message, client-first-bare) with no channel binding and an empty name:
    Postgres takes the role from the startup packet."""
    bare = f"n=,r={nonce}"
    return f"n,,{bare}", bare


def client_final(
    client_key: bytes, client_first_bare: str, client_nonce: str, server_first_message: bytes
) -> tuple[str, bytes]:
    """The client-final-message proving `client_key`, and the AuthMessage (for the server's
    signature). Salt and iteration count are not needed: they only lead to ClientKey."""
    server_text = _decode(server_first_message)
    attributes = dict(_attributes(server_text))
    nonce = attributes.get("r", "")
    if not nonce.startswith(client_nonce) or len(nonce) == len(client_nonce):
        raise ScramError("invalid SCRAM response (nonce mismatch)")
    if "s" not in attributes or "i" not in attributes:
        raise ScramError("malformed SCRAM message (expected s= and i=)")
    without_proof = f"c=biws,r={nonce}"
    auth_message = f"{client_first_bare},{server_text},{without_proof}".encode()
    proof = _xor(client_key, _hmac(_h(client_key), auth_message))
    return f"{without_proof},p={_b64(proof)}", auth_message


def server_signature_matches(server_key: bytes, auth_message: bytes, server_final: bytes) -> bool:
    """Is the server-final-message `v=...` signed with `server_key`?"""
    text = _decode(server_final)
    if not text.startswith("v="):
        return False
    expected = _hmac(server_key, auth_message)
    return hmac.compare_digest(_unb64(text[2:].split(",")[0]), expected)
