"""Uploads inside one workspace: who may store what, validation before anything is written, audit."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from app.audit.service import Category
from app.authz.roles import WorkspaceRole
from app.authz.scope import WorkspaceScope
from app.db.pagination import decode_cursor, encode_cursor
from app.errors import Forbidden, NotFound
from app.uploads import repository as repo
from app.uploads.inspect import Inspected, Purpose, RawUpload, inspect_upload
from app.uploads.models import StoredFile

# Brand assets are the workspace's face to its clients: admins and owners manage them.
_UPLOAD_ROLE = {Purpose.brand_asset: WorkspaceRole.admin, Purpose.knowledge: WorkspaceRole.member}


def list_files(
    scope: WorkspaceScope, *, limit: int, cursor: str | None, purpose: Purpose | None
) -> tuple[Sequence[StoredFile], str | None]:
    before = decode_cursor(cursor) if cursor else None
    rows = repo.latest(scope.session, workspace_id=scope.workspace_id, limit=limit + 1,
                       purpose=purpose.value if purpose else None, before=before)
    page = rows[:limit]
    return page, encode_cursor(page[-1]) if len(rows) > limit else None


def get_file(scope: WorkspaceScope, file_id: uuid.UUID) -> StoredFile:
    stored = repo.get(scope.session, file_id)
    if stored is None:
        raise NotFound()
    return stored


def read_file(scope: WorkspaceScope, file_id: uuid.UUID) -> StoredFile:
    """One file of the workspace with its bytes loaded (`content`)."""
    stored = repo.get_with_content(scope.session, file_id)
    if stored is None:
        raise NotFound()
    return stored


def check_may_upload(scope: WorkspaceScope, purpose: Purpose) -> None:
    needed = _UPLOAD_ROLE[purpose]
    role = scope.workspace_role
    if role is None or role.rank < needed.rank:
        what = "brand assets" if purpose is Purpose.brand_asset else "knowledge files"
        raise Forbidden(f"Uploading {what} needs the {needed.value} role or above in the workspace.")


def store_upload(scope: WorkspaceScope, *, purpose: Purpose, upload: RawUpload) -> tuple[StoredFile, Inspected]:
    """Validate, then store. Raises `UploadRefused` before anything is written (or audited)."""
    check_may_upload(scope, purpose)
    if upload.refusal is not None:
        raise upload.refusal
    inspected = inspect_upload(purpose=purpose, filename=upload.filename, declared_type=upload.declared_type, data=upload.data)
    content = inspected.content
    stored = StoredFile(
        tenant_id=scope.tenant_id, id=uuid.uuid4(), workspace_id=scope.workspace_id, purpose=purpose.value,
        filename=inspected.filename, content_type=inspected.file_type.media_type, size=len(content),
        sha256=hashlib.sha256(content).hexdigest(), content=content, uploaded_by=scope.user_id,
    )
    scope.session.add(stored)
    scope.session.flush()
    # Ids and facts only: a file name can be personal data, so it stays out of the trail.
    details: dict[str, object] = {"purpose": purpose.value, "content_type": stored.content_type, "size": stored.size,
                                  "sha256": stored.sha256}
    if inspected.file_type.key == "svg":
        details["svg_removed"] = list(inspected.svg_removed)
    elif inspected.file_type.inline:  # raster images: re-encoded; what of the upload was left behind
        details["image_removed"] = list(inspected.image_removed)
    scope.audit(category=Category.content_change, action="file.upload", target_type="file", target_id=stored.id,
                details=details)
    return stored, inspected


def delete_file(scope: WorkspaceScope, file_id: uuid.UUID) -> None:
    """Admins and owners delete any file; members only knowledge files they uploaded."""
    stored = get_file(scope, file_id)
    role = scope.workspace_role
    if role is None or role.rank < WorkspaceRole.admin.rank:
        if stored.purpose == Purpose.brand_asset.value:
            raise Forbidden("Deleting brand assets needs the admin role or above in the workspace.")
        if stored.uploaded_by != scope.user_id:
            raise Forbidden("Only the uploader or a workspace admin can delete this file.")
    scope.session.delete(stored)
    scope.session.flush()
    scope.audit(category=Category.data_deletion, action="file.delete", target_type="file", target_id=stored.id,
                details={"purpose": stored.purpose, "content_type": stored.content_type, "size": stored.size,
                         "sha256": stored.sha256})
