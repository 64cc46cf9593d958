"""Files over HTTP: round trips, safe serving, refusals (each audited), roles and isolation."""

from __future__ import annotations

import hashlib
import io
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import text

from app.edge.http import body_limit_for
from app.uploads.router import FRAMING_ALLOWANCE
from app.uploads.svg import SVG_NS
from tests.support.api import Caller, World
from tests.uploads import corpus
from tests.uploads.conftest import UPLOAD_MAX_BYTES

PROBLEM_JSON = "application/problem+json"
MiB = 1024 * 1024


def cid() -> str:
    return f"test-{uuid.uuid4().hex}"


def upload(caller: Caller, world: World, data: bytes, name: str, content_type: str | None, *, purpose: str = "knowledge",
           ws: int = 0, correlation: str | None = None) -> httpx.Response:
    headers = {"X-Correlation-ID": correlation} if correlation else {}
    part = (name, data, content_type) if content_type else (name, data)
    return caller.post(f"{world.ws(ws)}/files", params={"purpose": purpose}, files={"file": part}, headers=headers)


def stored(caller: Caller, world: World, data: bytes, name: str, content_type: str, **kw: Any) -> dict[str, Any]:
    r = upload(caller, world, data, name, content_type, **kw)
    assert r.status_code == 201, r.text
    return r.json()


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert r.json()["status"] == status
    return r.json()


def audit_rows(engine, world: World, correlation: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("select * from audit_events where tenant_id = :t and correlation_id = :c"),
                            {"t": world.tenant_id, "c": correlation}).mappings().all()
    return [dict(r) for r in rows]


def file_count(engine, world: World) -> int:
    with engine.connect() as conn:
        return conn.execute(text("select count(*) from uploaded_files where tenant_id = :t"), {"t": world.tenant_id}).scalar_one()


ROUND_TRIPS = [
    ("brand_asset", corpus.png(), "logo.png", "image/png", "image/png", "inline"),
    ("brand_asset", corpus.jpeg(), "logo.jpg", "image/jpeg", "image/jpeg", "inline"),
    ("brand_asset", corpus.webp(), "logo.webp", "image/webp", "image/webp", "inline"),
    ("brand_asset", corpus.gif(), "logo.gif", "image/gif", "image/gif", "inline"),
    ("knowledge", corpus.pdf(), "guide.pdf", "application/pdf", "application/pdf", "attachment"),
    ("knowledge", corpus.TEXT, "notes.txt", "text/plain", "text/plain; charset=utf-8", "attachment"),
    ("knowledge", corpus.MARKDOWN, "guide.md", "text/markdown", "text/markdown; charset=utf-8", "attachment"),
    ("knowledge", corpus.CSV, "figures.csv", "text/csv", "text/csv; charset=utf-8", "attachment"),
    ("knowledge", corpus.png(), "scan.png", "image/png", "image/png", "inline"),
    ("knowledge", corpus.jpeg(), "photo.jpeg", "image/jpeg", "image/jpeg", "inline"),
]


class TestRoundTrip:
    @pytest.mark.parametrize(("purpose", "data", "name", "declared", "served", "disposition"), ROUND_TRIPS,
                             ids=[f"{r[0]}-{r[2]}" for r in ROUND_TRIPS])
    def test_stored_as_served_with_safe_headers(self, world: World, purpose, data, name, declared, served, disposition):
        meta = stored(world.admin, world, data, name, declared, purpose=purpose)
        assert meta["purpose"] == purpose
        assert meta["filename"] == name
        assert meta["content_type"] == served.split(";")[0]
        # Raster images are re-encoded (tests/uploads/test_reencode.py); everything else is stored
        # byte for byte. Either way the size and digest are those of what is served.
        raster = served.startswith("image/")
        content = world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content").content
        assert meta["size"] == len(content) and meta["sha256"] == hashlib.sha256(content).hexdigest()
        if raster:
            assert Image.open(io.BytesIO(content)).size == Image.open(io.BytesIO(data)).size
        else:
            assert content == data
        assert meta["uploaded_by"] == str(world.user_ids[world.admin.subject])
        assert meta["workspace_id"] == str(world.workspaces[0])

        assert world.admin.get(f"{world.ws(0)}/files/{meta['id']}").json() == meta
        r = world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content")
        assert r.status_code == 200
        assert r.content == content
        assert r.headers["content-type"] == served
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["content-disposition"] == f"{disposition}; filename=\"{name}\"; filename*=UTF-8''{name}"

    def test_served_in_a_sandbox(self, world: World):
        meta = stored(world.admin, world, corpus.CLEAN_SVG, "logo.svg", "image/svg+xml", purpose="brand_asset")
        csp = world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content").headers["content-security-policy"]
        assert "sandbox" in [d.strip() for d in csp.split(";")]

    def test_detected_type_is_served_not_the_declared_one(self, world: World):
        # Markdown declared as text/plain (as many clients send it) is served as text/markdown.
        meta = stored(world.admin, world, corpus.MARKDOWN, "guide.md", "text/plain")
        assert meta["content_type"] == "text/markdown"
        assert world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content").headers["content-type"] == "text/markdown; charset=utf-8"

    def test_svg_stored_sanitised_and_served_as_attachment(self, world: World):
        meta = stored(world.admin, world, corpus.CLEAN_SVG, "logo.svg", "image/svg+xml", purpose="brand_asset")
        r = world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content")
        assert r.headers["content-type"] == "image/svg+xml"
        assert r.headers["content-disposition"].startswith("attachment;")
        assert meta["sha256"] == hashlib.sha256(r.content).hexdigest() and meta["size"] == len(r.content)
        root = ET.fromstring(r.content)
        ns = {"s": SVG_NS}
        assert [len(root.findall(f".//s:{t}", ns)) for t in ("rect", "circle", "path", "text")] == [2, 1, 1, 1]
        # The sanitised form round-trips identically: uploading it again stores the same bytes.
        again = stored(world.admin, world, r.content, "logo.svg", "image/svg+xml", purpose="brand_asset")
        assert again["sha256"] == meta["sha256"]
        assert world.admin.get(f"{world.ws(0)}/files/{again['id']}/content").content == r.content

    def test_unicode_and_path_file_names(self, world: World):
        meta = stored(world.admin, world, corpus.png(), "../../Logo – été.png", "image/png")
        assert meta["filename"] == "Logo – été.png"
        disposition = world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content").headers["content-disposition"]
        assert disposition == "inline; filename=\"Logo _ ete.png\"; filename*=UTF-8''Logo%20%E2%80%93%20%C3%A9t%C3%A9.png"

    def test_list_newest_first_filtered_and_paged(self, world: World):
        ids = [stored(world.admin, world, corpus.TEXT, f"n{i}.txt", "text/plain")["id"] for i in range(3)]
        logo = stored(world.admin, world, corpus.png(), "logo.png", "image/png", purpose="brand_asset")["id"]
        listing = world.admin.get(f"{world.ws(0)}/files").json()
        assert [f["id"] for f in listing["items"]] == [logo, *reversed(ids)]
        assert "content" not in listing["items"][0]
        only_brand = world.admin.get(f"{world.ws(0)}/files", params={"purpose": "brand_asset"}).json()
        assert [f["id"] for f in only_brand["items"]] == [logo]
        first = world.admin.get(f"{world.ws(0)}/files", params={"limit": 2}).json()
        second = world.admin.get(f"{world.ws(0)}/files", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [f["id"] for f in first["items"] + second["items"]] == [logo, *reversed(ids)]
        assert second["next_cursor"] is None

    def test_delete(self, world: World, superuser):
        meta = stored(world.admin, world, corpus.TEXT, "n.txt", "text/plain")
        correlation = cid()
        r = world.admin.delete(f"{world.ws(0)}/files/{meta['id']}", headers={"X-Correlation-ID": correlation})
        assert r.status_code == 204
        assert_problem(world.admin.get(f"{world.ws(0)}/files/{meta['id']}"), 404)
        assert_problem(world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content"), 404)
        [row] = audit_rows(superuser, world, correlation)
        assert (row["category"], row["action"], row["outcome"], row["target_id"]) == ("data_deletion", "file.delete", "success", meta["id"])


class TestAcceptedUploadIsAudited:
    def test_content_change_with_facts_not_names(self, world: World, superuser):
        correlation = cid()
        meta = stored(world.admin, world, corpus.SVG_XSS["onload"], "secret-client-name.svg", "image/svg+xml",
                      purpose="brand_asset", correlation=correlation)
        [row] = audit_rows(superuser, world, correlation)
        assert (row["category"], row["action"], row["outcome"]) == ("content_change", "file.upload", "success")
        assert (row["target_type"], row["target_id"], row["workspace_id"]) == ("file", meta["id"], world.workspaces[0])
        assert row["details"] == {"purpose": "brand_asset", "content_type": "image/svg+xml", "size": meta["size"],
                                  "sha256": meta["sha256"], "svg_removed": ["@onclick", "@onload"]}
        assert "secret-client-name" not in str(row)


REFUSALS = [
    # (id, purpose, data, name, declared, status, reason, detail fragment)
    ("gif_js_polyglot", "brand_asset", corpus.gif_js_polyglot(), "logo.gif", "image/gif", 400, "polyglot_script",
     "whose header also reads as JavaScript"),
    ("gif_script_comment", "brand_asset", corpus.gif(comment=b"<script>alert(1)</script>"), "logo.gif", "image/gif", 400,
     "polyglot_html", "also contains HTML markup"),
    ("pdf_html_polyglot", "knowledge", corpus.pdf(header=b"%<html><script>alert(1)</script></html>\n"), "guide.pdf",
     "application/pdf", 400, "polyglot_html", "HTML tags in its first 1 KB"),
    ("png_wrong_magic", "brand_asset", b"\x00" + corpus.png()[1:], "logo.png", "image/png", 415, "content_mismatch",
     "The file's content is not a PNG image."),
    ("exe_as_png", "brand_asset", corpus.EXE, "logo.png", "image/png", 415, "content_mismatch",
     "The file's content is not a PNG image. It looks like a Windows executable."),
    ("zip_as_pdf", "knowledge", corpus.zip_archive(), "guide.pdf", "application/pdf", 415, "content_mismatch",
     "It looks like a ZIP archive"),
    ("jar_as_pdf", "knowledge", corpus.zip_archive(jar=True), "guide.pdf", "application/pdf", 415, "content_mismatch",
     "It looks like a ZIP archive"),
    ("declared_vs_extension", "brand_asset", corpus.png(), "logo.png", "image/gif", 415, "declared_type_mismatch",
     "does not match the .png extension"),
    ("extension_vs_magic", "brand_asset", corpus.png(), "logo.gif", "image/gif", 415, "content_mismatch",
     "not a GIF image. It looks like a PNG image."),
    ("jpeg_plus_zip", "knowledge", corpus.jpeg() + corpus.zip_archive(), "photo.jpg", "image/jpeg", 400, "trailing_data",
     "data appended after its end"),
    ("jpeg_plus_exe", "knowledge", corpus.jpeg() + corpus.EXE, "photo.jpg", "image/jpeg", 400, "trailing_data",
     "Windows executable"),
    ("billion_laughs", "brand_asset", corpus.BILLION_LAUGHS, "logo.svg", "image/svg+xml", 400, "svg_dtd",
     "SVG with a DTD is refused."),
    ("xxe", "brand_asset", corpus.XXE, "logo.svg", "image/svg+xml", 400, "svg_dtd", "SVG with a DTD is refused."),
    ("decompression_bomb", "brand_asset", corpus.png_bomb(), "logo.png", "image/png", 400, "too_many_pixels",
     "20000 × 20000 pixels"),
    ("text_with_nul", "knowledge", b"hello\x00world\n", "notes.txt", "text/plain", 400, "nul_bytes",
     "Text files must not contain NUL bytes."),
    ("exe_extension", "knowledge", corpus.EXE, "setup.exe", "application/octet-stream", 415, "extension_not_allowed",
     "Files with the .exe extension are not accepted as a knowledge file"),
    ("html_as_text", "knowledge", b"<html><script>alert(1)</script></html>", "notes.txt", "text/plain", 415,
     "content_mismatch", "It looks like an HTML document."),
    ("empty", "knowledge", b"", "notes.txt", "text/plain", 400, "empty", "The file is empty."),
]


class TestRefusals:
    @pytest.mark.parametrize(("purpose", "data", "name", "declared", "status", "reason", "detail"),
                             [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
    def test_refused_with_a_reason_and_audited(self, world: World, superuser, purpose, data, name, declared, status, reason,
                                               detail):
        correlation = cid()
        problem = assert_problem(upload(world.admin, world, data, name, declared, purpose=purpose, correlation=correlation),
                                 status)
        assert detail in problem["detail"]
        [row] = audit_rows(superuser, world, correlation)
        assert (row["category"], row["action"], row["outcome"]) == ("content_change", "file.upload", "refused")
        assert row["workspace_id"] == world.workspaces[0]
        assert row["actor_user_id"] == world.user_ids[world.admin.subject]
        assert row["details"]["reason"] == reason and row["details"]["status"] == status
        assert file_count(superuser, world) == 0

    @pytest.mark.parametrize("name", sorted(corpus.SVG_XSS))
    def test_svg_attack_vectors_are_stored_neutralised(self, world: World, name):
        meta = stored(world.admin, world, corpus.SVG_XSS[name], "logo.svg", "image/svg+xml", purpose="brand_asset")
        served = world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content").content.lower()
        assert [t for t in corpus.SVG_XSS_TOKENS if t in served] == []


class TestSizeCap:
    def test_knowledge_cap_plus_one_is_413(self, world: World, superuser):
        correlation = cid()
        r = upload(world.admin, world, b"a" * (UPLOAD_MAX_BYTES + 1), "big.txt", "text/plain", correlation=correlation)
        assert assert_problem(r, 413)["detail"] == f"A knowledge file may be at most {UPLOAD_MAX_BYTES} bytes."
        [row] = audit_rows(superuser, world, correlation)
        assert (row["outcome"], row["details"]["reason"]) == ("refused", "too_large")

    def test_knowledge_file_of_exactly_the_cap(self, world: World):
        meta = stored(world.admin, world, b"a" * UPLOAD_MAX_BYTES, "big.txt", "text/plain")
        assert meta["size"] == UPLOAD_MAX_BYTES

    def test_brand_asset_cap_is_2_mib(self, world: World):
        r = upload(world.admin, world, b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * MiB - 7), "logo.png", "image/png",
                   purpose="brand_asset")
        assert assert_problem(r, 413)["detail"] == f"A brand asset may be at most {2 * MiB} bytes."

    def test_edge_body_cap_is_lifted_to_the_upload_cap_for_these_routes(self, world: World, files_client):
        settings = files_client.app.state.settings
        limit = body_limit_for(f"{world.ws(0)}/files", settings)
        assert limit == settings.upload_max_bytes + FRAMING_ALLOWANCE
        assert body_limit_for(f"{world.ws(0)}/documents", settings) == settings.max_body_bytes

    def test_not_multipart_is_415(self, world: World):
        r = world.admin.post(f"{world.ws(0)}/files", params={"purpose": "knowledge"}, content=b"hello",
                             headers={"Content-Type": "text/plain"})
        assert "multipart/form-data" in assert_problem(r, 415)["detail"]

    def test_purpose_is_required(self, world: World):
        r = world.admin.post(f"{world.ws(0)}/files", files={"file": ("n.txt", b"x", "text/plain")})
        assert_problem(r, 422)
        r = world.admin.post(f"{world.ws(0)}/files", params={"purpose": "avatar"}, files={"file": ("n.txt", b"x", "text/plain")})
        assert_problem(r, 422)


class TestRoles:
    def test_viewer_reads_and_downloads_but_cannot_upload_or_delete(self, world: World):
        viewer = world.join(workspace=0, role="viewer")
        meta = stored(world.admin, world, corpus.png(), "logo.png", "image/png", purpose="brand_asset")
        assert viewer.get(f"{world.ws(0)}/files").json()["items"][0]["id"] == meta["id"]
        assert viewer.get(f"{world.ws(0)}/files/{meta['id']}").status_code == 200
        assert viewer.get(f"{world.ws(0)}/files/{meta['id']}/content").content == corpus.png()
        for purpose in ("knowledge", "brand_asset"):
            assert_problem(upload(viewer, world, corpus.png(), "logo.png", "image/png", purpose=purpose), 403)
        assert_problem(viewer.delete(f"{world.ws(0)}/files/{meta['id']}"), 403)

    def test_member_uploads_knowledge_not_brand_assets(self, world: World, superuser):
        member = world.join(workspace=0, role="member")
        stored(member, world, corpus.TEXT, "notes.txt", "text/plain")
        correlation = cid()
        r = upload(member, world, corpus.png(), "logo.png", "image/png", purpose="brand_asset", correlation=correlation)
        assert assert_problem(r, 403)["detail"] == "Uploading brand assets needs the admin role or above in the workspace."
        [row] = audit_rows(superuser, world, correlation)
        assert (row["category"], row["outcome"]) == ("access_denied", "denied")

    def test_role_is_checked_before_the_content(self, world: World):
        # A member sending an attack as a brand asset is refused for the role, not told about the content.
        member = world.join(workspace=0, role="member")
        r = upload(member, world, corpus.EXE, "logo.png", "image/png", purpose="brand_asset")
        assert_problem(r, 403)

    def test_workspace_admin_uploads_brand_assets(self, world: World):
        admin = world.join(workspace=0, role="admin")
        stored(admin, world, corpus.png(), "logo.png", "image/png", purpose="brand_asset")

    def test_delete_rules(self, world: World):
        member = world.join(workspace=0, role="member")
        other = world.join(workspace=0, role="member")
        own = stored(member, world, corpus.TEXT, "mine.txt", "text/plain")
        theirs = stored(other, world, corpus.TEXT, "theirs.txt", "text/plain")
        logo = stored(world.admin, world, corpus.png(), "logo.png", "image/png", purpose="brand_asset")
        assert_problem(member.delete(f"{world.ws(0)}/files/{theirs['id']}"), 403)
        assert_problem(member.delete(f"{world.ws(0)}/files/{logo['id']}"), 403)
        assert member.delete(f"{world.ws(0)}/files/{own['id']}").status_code == 204
        assert world.admin.delete(f"{world.ws(0)}/files/{theirs['id']}").status_code == 204


class TestIsolation:
    @pytest.fixture
    def files(self, world: World) -> dict[str, str]:
        return {
            "ws0": stored(world.admin, world, corpus.TEXT, "a.txt", "text/plain", ws=0)["id"],
            "ws1": stored(world.admin, world, corpus.TEXT, "b.txt", "text/plain", ws=1)["id"],
        }

    @pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/content"), ("DELETE", "")])
    def test_other_workspace_file_is_404_like_a_random_id(self, world: World, files, method, suffix):
        foreign = world.admin.request(method, f"{world.ws(0)}/files/{files['ws1']}{suffix}")
        random = world.admin.request(method, f"{world.ws(0)}/files/{uuid.uuid4()}{suffix}")
        assert assert_problem(foreign, 404) == assert_problem(random, 404)
        assert world.admin.get(f"{world.ws(1)}/files/{files['ws1']}").status_code == 200

    @pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/content"), ("DELETE", "")])
    def test_other_tenant_file_is_404_like_a_random_id(self, world: World, other_world: World, files, method, suffix):
        foreign = other_world.admin.request(method, f"{other_world.ws(0)}/files/{files['ws0']}{suffix}")
        random = other_world.admin.request(method, f"{other_world.ws(0)}/files/{uuid.uuid4()}{suffix}")
        assert assert_problem(foreign, 404) == assert_problem(random, 404)
        # Through the owner's path, an outsider is not a member at all: 404 as well.
        assert_problem(other_world.admin.request(method, f"{world.ws(0)}/files/{files['ws0']}{suffix}"), 404)
        assert world.admin.get(f"{world.ws(0)}/files/{files['ws0']}").status_code == 200

    def test_listing_shows_only_the_workspace(self, world: World, files):
        assert [f["id"] for f in world.admin.get(f"{world.ws(0)}/files").json()["items"]] == [files["ws0"]]
        assert [f["id"] for f in world.admin.get(f"{world.ws(1)}/files").json()["items"]] == [files["ws1"]]

    def test_member_of_one_workspace_cannot_upload_into_another(self, world: World):
        member = world.join(workspace=0, role="member")
        assert_problem(upload(member, world, corpus.TEXT, "n.txt", "text/plain", ws=1), 404)

    def test_outsider_learns_nothing_from_an_oversized_upload(self, world: World, other_world: World):
        # The size refusal waits until the caller is known: an outsider gets the same 404 either way.
        big = upload(other_world.admin, world, b"a" * (UPLOAD_MAX_BYTES + 1), "big.txt", "text/plain")
        small = upload(other_world.admin, world, corpus.TEXT, "n.txt", "text/plain")
        assert assert_problem(big, 404) == assert_problem(small, 404)
