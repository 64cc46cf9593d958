"""Provider credentials of a workspace: stored sealed, shown by last four and fingerprint, opened at use.

The secret is encrypted before it reaches a SQL statement, so neither the database, its logs nor
the statement log ever sees it; responses and audit events carry only provider, label, kind,
`last4` and the fingerprint. `use_credential` is the one way back to the plaintext.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from types import TracebackType

from pydantic import SecretStr
from sqlalchemy import func

from app.audit.service import Category
from app.authz.scope import WorkspaceScope
from app.credentials import repository as repo
from app.credentials.models import SECRET, CredentialKind, Provider, ProviderCredential
from app.crypto import datakeys
from app.errors import Conflict, DomainError, NotFound

log = logging.getLogger("palisade.credentials")

MAX_PER_WORKSPACE = 100
MIN_SECRET_CHARS = 8
MAX_SECRET_CHARS = 16_384
# Below this length, four characters are too large a share of the secret to show.
LAST4_MIN_CHARS = 16


class CredentialStoreUnavailable(DomainError):
    status = 503
    title = "Service Unavailable"


def _keys(keys: datakeys.DataKeys | None) -> datakeys.DataKeys:
    if keys is not None:
        return keys
    try:
        return datakeys.installed()
    except datakeys.KeysUnavailable:
        raise CredentialStoreUnavailable("Credential storage is not configured on this server.") from None


def _checked(secret: SecretStr, *, label: str) -> str:
    # Messages describe the rule, never the value.
    value = secret.get_secret_value().strip()
    if not MIN_SECRET_CHARS <= len(value) <= MAX_SECRET_CHARS:
        raise DomainError(f"The secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters long.")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        # A line break in a key would end up inside an HTTP header at use.
        raise DomainError("The secret must not contain control characters or line breaks.")
    if value in label:
        raise DomainError("The label must not contain the secret.")
    return value


def _last4(value: str) -> str | None:
    return value[-4:] if len(value) >= LAST4_MIN_CHARS else None


def _audit(scope: WorkspaceScope, action: str, credential: ProviderCredential, details: dict[str, str | None]) -> None:
    # Never the value: what changed is told by the fingerprints.
    scope.audit(category=Category.secret_change, action=action, target_type="provider_credential", target_id=credential.id,
                details=details)


def list_credentials(scope: WorkspaceScope) -> Sequence[ProviderCredential]:
    return repo.in_workspace(scope.session, workspace_id=scope.workspace_id)


def get_credential(scope: WorkspaceScope, credential_id: uuid.UUID, *, for_update: bool = False) -> ProviderCredential:
    credential = repo.get(scope.session, credential_id, for_update=for_update)
    if credential is None:
        raise NotFound()
    return credential


def create_credential(scope: WorkspaceScope, *, provider: Provider, label: str, kind: CredentialKind, secret: SecretStr,
                      keys: datakeys.DataKeys | None = None) -> ProviderCredential:
    value = _checked(secret, label=label)
    if repo.count_in_workspace(scope.session, workspace_id=scope.workspace_id) >= MAX_PER_WORKSPACE:
        raise Conflict(f"A workspace holds at most {MAX_PER_WORKSPACE} credentials.")
    if repo.label_taken(scope.session, workspace_id=scope.workspace_id, label=label):
        raise Conflict("A credential with this label already exists in the workspace.")
    credential_id = uuid.uuid4()
    context = SECRET.context(tenant_id=scope.tenant_id, workspace_id=scope.workspace_id, row_id=credential_id)
    sealed = _keys(keys).seal(scope.session, context, value.encode())
    credential = ProviderCredential(
        tenant_id=scope.tenant_id, id=credential_id, workspace_id=scope.workspace_id, provider=provider.value, label=label,
        kind=kind.value, ciphertext=sealed.ciphertext, dek_version=sealed.dek_version, last4=_last4(value),
        fingerprint=sealed.fingerprint, created_by=scope.user_id,
    )
    scope.session.add(credential)
    scope.session.flush()
    _audit(scope, "credential.create", credential,
           {"provider": credential.provider, "kind": credential.kind, "label": label, "fingerprint": sealed.fingerprint})
    return credential


def replace_secret(scope: WorkspaceScope, credential_id: uuid.UUID, *, secret: SecretStr,
                   keys: datakeys.DataKeys | None = None) -> ProviderCredential:
    """A new value for an existing credential (rotated at the provider); sealed afresh."""
    credential = get_credential(scope, credential_id, for_update=True)
    value = _checked(secret, label=credential.label)
    context = SECRET.context(tenant_id=scope.tenant_id, workspace_id=scope.workspace_id, row_id=credential.id)
    sealed = _keys(keys).seal(scope.session, context, value.encode())
    previous = credential.fingerprint
    credential.ciphertext, credential.dek_version = sealed.ciphertext, sealed.dek_version
    credential.last4, credential.fingerprint, credential.updated_at = _last4(value), sealed.fingerprint, func.now()
    scope.session.flush()
    _audit(scope, "credential.replace", credential,
           {"provider": credential.provider, "previous_fingerprint": previous, "fingerprint": sealed.fingerprint})
    return credential


def delete_credential(scope: WorkspaceScope, credential_id: uuid.UUID) -> None:
    credential = get_credential(scope, credential_id, for_update=True)
    scope.session.delete(credential)
    scope.session.flush()
    _audit(scope, "credential.delete", credential,
           {"provider": credential.provider, "label": credential.label, "fingerprint": credential.fingerprint})


class CredentialInUse:
    """`with use_credential(scope, id) as secret:` decrypts on entry; nothing of it is kept here.

    A class rather than a generator: an exception raised inside the `with` block then has no frame
    of ours (with the plaintext in its locals) in its traceback for an error reporter to collect.
    """

    def __init__(self, scope: WorkspaceScope, credential_id: uuid.UUID, keys: datakeys.DataKeys | None) -> None:
        self._scope = scope
        self._credential_id = credential_id
        self._keys = keys

    def __enter__(self) -> str:
        scope = self._scope
        credential = get_credential(scope, self._credential_id)
        context = SECRET.context(tenant_id=scope.tenant_id, workspace_id=credential.workspace_id, row_id=credential.id)
        log.debug("credential_used", extra={"tenant_id": str(scope.tenant_id), "credential_id": str(credential.id)})
        return _keys(self._keys).open(scope.session, context, credential.ciphertext, dek_version=credential.dek_version).decode()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def __repr__(self) -> str:
        return f"use_credential({self._credential_id})"


def use_credential(scope: WorkspaceScope, credential_id: uuid.UUID, *, keys: datakeys.DataKeys | None = None) -> CredentialInUse:
    """The credential's plaintext for the duration of a `with` block (decrypted at this moment)."""
    return CredentialInUse(scope, credential_id, keys)
