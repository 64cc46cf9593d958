"""HTTP for knowledge-base documents."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from app.authz.dependencies import WorkspaceAccess, WorkspaceViewer, WorkspaceWriter
from app.authz.roles import WorkspaceRole
from app.authz.scope import WorkspaceScope
from app.idempotency import Idempotent
from app.knowledge import service
from app.knowledge.schemas import DocumentCopy, DocumentCreate, DocumentPage, DocumentRead, DocumentUpdate

router = APIRouter(prefix="/tenants/{tenant_id}/workspaces/{workspace_id}/documents", tags=["documents"])

WorkspaceCrosser = Annotated[WorkspaceScope, Depends(WorkspaceAccess(WorkspaceRole.multi_account_manager))]


@router.get("", response_model=DocumentPage)
def list_documents(
    scope: WorkspaceViewer,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]+$")] = None,
) -> DocumentPage:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    docs, next_cursor = service.list_documents(scope, limit=limit, cursor=cursor)
    # One validation, the whole page in pydantic-core (rows read by attribute). FastAPI's own check of
    # the returned DocumentPage is then a pass-through: a model instance of the response_model's class
    # is not revalidated (pydantic's revalidate_instances="never"), only serialized.
    return DocumentPage.model_validate({"items": docs, "next_cursor": next_cursor})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DocumentRead)
def create_document(body: DocumentCreate, scope: WorkspaceWriter, _: Idempotent) -> DocumentRead:
    return DocumentRead.model_validate(service.create_document(scope, title=body.title, body=body.body))


@router.get("/{document_id}", response_model=DocumentRead)
def get_document(document_id: uuid.UUID, scope: WorkspaceViewer) -> DocumentRead:
    return DocumentRead.model_validate(service.get_document(scope, document_id))


@router.patch("/{document_id}", response_model=DocumentRead)
def update_document(document_id: uuid.UUID, body: DocumentUpdate, scope: WorkspaceWriter) -> DocumentRead:
    return DocumentRead.model_validate(service.update_document(scope, document_id, title=body.title, body=body.body))


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(document_id: uuid.UUID, scope: WorkspaceWriter) -> None:
    service.delete_document(scope, document_id)


@router.post("/{document_id}/copy", status_code=status.HTTP_201_CREATED, response_model=DocumentRead)
def copy_document(document_id: uuid.UUID, body: DocumentCopy, scope: WorkspaceCrosser, _: Idempotent) -> DocumentRead:
    """Copy into another workspace named explicitly in the body; recorded as a workspace crossing."""
    return DocumentRead.model_validate(service.copy_document(scope, document_id, target_workspace_id=body.target_workspace_id))
