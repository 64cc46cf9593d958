"""HTTP for a workspace's provider credentials: workspace admins and the tenant's customer_admins.

No route returns or accepts back a secret's value except as the body of POST and PUT.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from app.authz.dependencies import WorkspaceAdmin
from app.credentials import service
from app.credentials.schemas import CredentialCreate, CredentialList, CredentialRead, CredentialReplace
from app.idempotency import Idempotent

router = APIRouter(prefix="/tenants/{tenant_id}/workspaces/{workspace_id}/credentials", tags=["credentials"])


@router.get("", response_model=CredentialList)
def list_credentials(scope: WorkspaceAdmin) -> CredentialList:
    return CredentialList(items=[CredentialRead.model_validate(c) for c in service.list_credentials(scope)])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CredentialRead)
def create_credential(body: CredentialCreate, scope: WorkspaceAdmin, _: Idempotent) -> CredentialRead:
    return CredentialRead.model_validate(
        service.create_credential(scope, provider=body.provider, label=body.label, kind=body.kind, secret=body.secret)
    )


@router.get("/{credential_id}", response_model=CredentialRead)
def get_credential(credential_id: uuid.UUID, scope: WorkspaceAdmin) -> CredentialRead:
    return CredentialRead.model_validate(service.get_credential(scope, credential_id))


@router.put("/{credential_id}", response_model=CredentialRead)
def replace_secret(credential_id: uuid.UUID, body: CredentialReplace, scope: WorkspaceAdmin) -> CredentialRead:
    """Replace the stored value (after rotating it at the provider); provider, kind and label stay."""
    return CredentialRead.model_validate(service.replace_secret(scope, credential_id, secret=body.secret))


@router.delete("/{credential_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_credential(credential_id: uuid.UUID, scope: WorkspaceAdmin) -> None:
    service.delete_credential(scope, credential_id)
