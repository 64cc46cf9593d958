"""Microsoft Entra ID authentication to PostgreSQL: no database password anywhere.

With `PALISADE_DATABASE_AUTH=entra` the database URLs carry a role name and no password. Each new
connection, of every engine in the process (the app's pool, doctor, migrations), sends as its
password an Entra access token for Azure Database for PostgreSQL, obtained from the process's
managed identity (the credential chooses it: `app.crypto.secrets.azure_credential`). The server
checks the token and that its object id is the one the role was created for
(`pgaadauth_create_principal_with_oid`, which `palisade migrate` calls for the app role).

azure-identity caches the token and refreshes it before it expires, so a pooled connection opened
an hour later gets a fresh one; connections already open stay open (PostgreSQL checks the password
only at sign-in).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Engine

# The resource of Azure Database for PostgreSQL (and MySQL) in the public cloud.
SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


class TokenSource(Protocol):
    def get_token(self, *scopes: str) -> Any: ...


_source: TokenSource | None = None


def _password(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
    if _source is None:
        return
    if cparams.get("password"):
        raise ValueError("with Entra ID authentication a database URL must carry no password")
    cparams["password"] = _source.get_token(SCOPE).token


def install(source: TokenSource | None) -> None:
    """Sign every new database connection of this process in with tokens from `source` (None: stop)."""
    global _source
    _source = source
    if not event.contains(Engine, "do_connect", _password):
        event.listen(Engine, "do_connect", _password)


def installed() -> bool:
    return _source is not None


def create_app_principal(conn: Any, *, role: str, object_id: str) -> bool:
    """Create the app role as the Entra principal `object_id` (a managed identity), if missing.

    `pgaadauth_create_principal_with_oid` is Azure's: it creates a LOGIN role that may sign in only
    with tokens for that object id. The migration then confines it as usual (NOBYPASSRLS, grants).
    Returns whether it created the role.
    """
    exists = conn.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).first()
    if exists:
        return False
    conn.exec_driver_sql("SELECT * FROM pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)",
                         (role, object_id))
    # The same confinement as a role the first migration creates (doctor checks it). The function
    # creates it NOSUPERUSER NOBYPASSRLS already, and only a superuser may even restate those.
    conn.exec_driver_sql(f'ALTER ROLE "{role}" NOCREATEDB NOCREATEROLE NOINHERIT')
    return True


def configure(settings: Any) -> None:
    """Install the token source when the settings ask for Entra ID authentication."""
    if getattr(settings, "database_auth", "password") != "entra" or installed():
        return
    from app.crypto.secrets import credential_from_settings

    install(credential_from_settings(settings))
