"""Knowledge-base documents inside one workspace, and the explicit, audited copy across workspaces."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from app.audit.service import Category
from app.authz.roles import WorkspaceRole
from app.authz.scope import WorkspaceScope
from app.db.pagination import decode_cursor, encode_cursor
from app.db.session import DbContext, apply_context
from app.errors import Forbidden, NotFound
from app.knowledge import repository as repo
from app.knowledge.models import Document
from app.tenancy import repository as tenancy_repo


def list_documents(scope: WorkspaceScope, *, limit: int, cursor: str | None) -> tuple[Sequence[Document], str | None]:
    before = decode_cursor(cursor) if cursor else None
    docs = repo.latest(scope.session, workspace_id=scope.workspace_id, limit=limit + 1, before=before)
    page = docs[:limit]
    return page, encode_cursor(page[-1]) if len(docs) > limit else None


def get_document(scope: WorkspaceScope, document_id: uuid.UUID) -> Document:
    doc = repo.get(scope.session, document_id)
    if doc is None:
        raise NotFound()
    return doc


def create_document(scope: WorkspaceScope, *, title: str, body: str) -> Document:
    doc = Document(tenant_id=scope.tenant_id, id=uuid.uuid4(), workspace_id=scope.workspace_id, title=title, body=body, author_id=scope.user_id)
    scope.session.add(doc)
    scope.session.flush()
    scope.audit(category=Category.content_change, action="document.create", target_type="document", target_id=doc.id)
    return doc


def update_document(scope: WorkspaceScope, document_id: uuid.UUID, *, title: str | None, body: str | None) -> Document:
    doc = get_document(scope, document_id)
    changed = []
    if title is not None and title != doc.title:
        doc.title, changed = title, [*changed, "title"]
    if body is not None and body != doc.body:
        doc.body, changed = body, [*changed, "body"]
    scope.session.flush()
    if changed:
        scope.audit(category=Category.content_change, action="document.update", target_type="document", target_id=doc.id,
                    details={"changed": changed})
    return doc


def delete_document(scope: WorkspaceScope, document_id: uuid.UUID) -> None:
    """Members delete their own documents; admins and owners any."""
    doc = get_document(scope, document_id)
    role = scope.workspace_role
    if role is None or (role.rank < WorkspaceRole.admin.rank and doc.author_id != scope.user_id):
        raise Forbidden("Only the author or a workspace admin can delete this document.")
    scope.session.delete(doc)
    scope.session.flush()
    scope.audit(category=Category.data_deletion, action="document.delete", target_type="document", target_id=doc.id)


def copy_document(scope: WorkspaceScope, document_id: uuid.UUID, *, target_workspace_id: uuid.UUID) -> Document:
    """Copy into another workspace of the tenant: needs multi_account_manager or above on both sides."""
    source = get_document(scope, document_id)
    assert scope.user_id is not None
    target = tenancy_repo.workspace_membership(scope.session, workspace_id=target_workspace_id, user_id=scope.user_id)
    if target is None or target_workspace_id == scope.workspace_id:
        raise NotFound()
    if WorkspaceRole(target.role).rank < WorkspaceRole.multi_account_manager.rank:
        raise Forbidden("Copying into a workspace needs multi_account_manager or above there.")
    # Crossing is explicit: the transaction now writes as the target workspace.
    apply_context(scope.session, DbContext(tenant_id=scope.tenant_id, workspace_id=target_workspace_id, user_id=scope.user_id))
    copy = Document(tenant_id=scope.tenant_id, id=uuid.uuid4(), workspace_id=target_workspace_id, title=source.title,
                    body=source.body, author_id=scope.user_id)
    scope.session.add(copy)
    scope.session.flush()
    scope.audit(category=Category.workspace_crossing, action="document.copy", target_type="document", target_id=copy.id,
                details={"from_workspace_id": str(scope.workspace_id), "to_workspace_id": str(target_workspace_id),
                         "source_document_id": str(source.id), "target_role": target.role})
    return copy
