"""`password | palisade_scram_verifier(role)`: the SCRAM-SHA-256 verifier PostgreSQL would store.

The roles are created and their passwords changed with this verifier, computed here on the control
node, so the password itself never reaches the server: not its statement log (log_statement=ddl
logs every CREATE/ALTER ROLE), not pg_stat_statements, not a DBA's session. PostgreSQL stores a
verifier it is given as it is, so an app that signs in with the password is checked against it.

The format is PostgreSQL's (RFC 5802 and RFC 7677, 4096 iterations, a 16-byte salt):

    SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>

    SaltedPassword = PBKDF2-HMAC-SHA256(password, salt, iterations)
    StoredKey      = SHA-256(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

PostgreSQL normalises a password with SASLprep (RFC 4013) before hashing it; for printable ASCII
that is the identity, which is why the role accepts printable ASCII passwords only and this filter
refuses anything else rather than hash it differently from the server.

The salt is derived from the password and the role name, so the same password gives the same
verifier on every run: community.postgresql.postgresql_user compares a verifier it is given with
pg_authid as a string, and a second run changes nothing. It is derived with PBKDF2 at the same
iteration count, not a single HMAC: a salt that is a fast function of the password would let
whoever reads a verifier test guesses against the salt at one HMAC each, skipping the iterations.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from ansible.errors import AnsibleFilterError

ITERATIONS = 4096
SALT_BYTES = 16
SALT_LABEL = b"palisade scram salt|"


def scram_sha256_verifier(password: str, salt: bytes, iterations: int = ITERATIONS) -> str:
    """The verifier of `password` with this salt and iteration count, as pg_authid.rolpassword holds it."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def palisade_scram_verifier(password: object, role: object) -> str:
    """The verifier for `role`'s `password`, with a salt derived from both (same inputs, same verifier)."""
    if not isinstance(password, str) or not isinstance(role, str) or not role:
        raise AnsibleFilterError("palisade_scram_verifier takes a password (string) and a role name")
    if not password or any(not 0x20 <= ord(c) <= 0x7E for c in password):
        # Never echo the value: this message may end up in a log.
        raise AnsibleFilterError("palisade_scram_verifier: the password must be printable ASCII (SASLprep is then the identity)")
    salt = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), SALT_LABEL + role.encode("utf-8"), ITERATIONS)[:SALT_BYTES]
    return scram_sha256_verifier(password, salt)


class FilterModule:
    def filters(self) -> dict:
        return {"palisade_scram_verifier": palisade_scram_verifier}
