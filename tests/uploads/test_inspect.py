"""Type detection and validation, without HTTP: what is accepted as what, and why the rest is refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.uploads.inspect import (
    BRAND_ASSET_MAX_BYTES,
    MAX_IMAGE_PIXELS,
    Purpose,
    UploadRefused,
    clean_filename,
    inspect_upload,
    max_bytes,
)
from tests.uploads import corpus

BRAND, KNOWLEDGE = Purpose.brand_asset, Purpose.knowledge


def inspect(data: bytes, name: str, declared: str | None, purpose: Purpose = BRAND):
    return inspect_upload(purpose=purpose, filename=name, declared_type=declared, data=data)


def refused(data: bytes, name: str, declared: str | None, purpose: Purpose = BRAND) -> UploadRefused:
    with pytest.raises(UploadRefused) as caught:
        inspect(data, name, declared, purpose)
    return caught.value


LEGITIMATE = [
    (BRAND, corpus.png(), "logo.png", "image/png", "image/png"),
    (BRAND, corpus.jpeg(), "logo.JPG", "image/jpeg", "image/jpeg"),
    (BRAND, corpus.jpeg(progressive=True), "logo.jpeg", "image/jpeg", "image/jpeg"),
    (BRAND, corpus.webp(), "logo.webp", "image/webp", "image/webp"),
    (BRAND, corpus.webp(lossless=True), "logo.webp", "image/webp", "image/webp"),
    (BRAND, corpus.gif(), "logo.gif", "image/gif", "image/gif"),
    (KNOWLEDGE, corpus.pdf(), "guide.pdf", "application/pdf", "application/pdf"),
    (KNOWLEDGE, corpus.TEXT, "notes.txt", "text/plain; charset=utf-8", "text/plain"),
    (KNOWLEDGE, corpus.MARKDOWN, "guide.md", "text/markdown", "text/markdown"),
    (KNOWLEDGE, corpus.MARKDOWN, "guide.markdown", "text/plain", "text/markdown"),
    (KNOWLEDGE, corpus.CSV, "figures.csv", "text/csv", "text/csv"),
    (KNOWLEDGE, corpus.CSV, "figures.csv", "application/vnd.ms-excel", "text/csv"),
    (KNOWLEDGE, corpus.png(), "scan.png", "image/png", "image/png"),
    (KNOWLEDGE, corpus.jpeg(), "photo.jpg", "image/jpeg", "image/jpeg"),
]


class TestLegitimateFilesPass:
    @pytest.mark.parametrize(("purpose", "data", "name", "declared", "detected"), LEGITIMATE,
                             ids=[f"{p.value}-{n}-{d}" for p, _, n, d, _ in LEGITIMATE])
    def test_accepted(self, purpose, data, name, declared, detected):
        result = inspect(data, name, declared, purpose)
        assert result.file_type.media_type == detected
        if detected.startswith("image/"):  # re-encoded: the same picture in the same format
            with Image.open(io.BytesIO(result.content)) as stored, Image.open(io.BytesIO(data)) as original:
                assert (stored.format, stored.size) == (original.format, original.size)
        else:
            assert result.content == data

    def test_animated_images_are_refused(self):
        frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
        for fmt, name, declared in (("GIF", "a.gif", "image/gif"), ("WEBP", "a.webp", "image/webp"), ("PNG", "a.png", "image/png")):
            out = io.BytesIO()
            frames[0].save(out, fmt, save_all=True, append_images=frames[1:])
            assert refused(out.getvalue(), name, declared).reason == "animated"

    def test_jpeg_with_exif_thumbnail_segment(self):
        exif = Image.Exif()
        exif[0x010E] = "A description"
        data = corpus.jpeg(exif=exif)
        result = inspect(data, "p.jpg", "image/jpeg")
        assert b"A description" not in result.content and result.image_removed == ("exif",)


class TestAllowListPerPurpose:
    @pytest.mark.parametrize(("data", "name", "declared"), [
        (corpus.pdf(), "guide.pdf", "application/pdf"),
        (corpus.TEXT, "notes.txt", "text/plain"),
        (corpus.CSV, "x.csv", "text/csv"),
    ])
    def test_brand_assets_are_images_only(self, data, name, declared):
        exc = refused(data, name, declared, BRAND)
        assert exc.status == 415 and "not accepted as a brand asset" in exc.detail

    @pytest.mark.parametrize(("data", "name", "declared"), [
        (corpus.CLEAN_SVG, "logo.svg", "image/svg+xml"),
        (corpus.gif(), "a.gif", "image/gif"),
        (corpus.webp(), "a.webp", "image/webp"),
    ])
    def test_knowledge_takes_no_svg_gif_webp(self, data, name, declared):
        exc = refused(data, name, declared, KNOWLEDGE)
        assert exc.status == 415 and "not accepted as a knowledge file" in exc.detail

    @pytest.mark.parametrize("name", ["setup.exe", "page.html", "page.htm", "x.js", "archive.zip", "doc.docx", "noext", ".png"])
    def test_other_extensions_refused(self, name):
        exc = refused(corpus.png(), name, "image/png", KNOWLEDGE)
        assert exc.status == 415

    def test_caps(self):
        assert max_bytes(BRAND, 10 * 1024 * 1024) == BRAND_ASSET_MAX_BYTES == 2 * 1024 * 1024
        assert max_bytes(BRAND, 1024 * 1024) == 1024 * 1024  # the global setting lowers both
        assert max_bytes(KNOWLEDGE, 10 * 1024 * 1024) == 10 * 1024 * 1024


class TestDeclaredExtensionMagicMustAgree:
    def test_declared_differs_from_extension(self):
        exc = refused(corpus.png(), "logo.png", "image/jpeg")
        assert (exc.status, exc.reason) == (415, "declared_type_mismatch")
        assert exc.detail == "The declared Content-Type does not match the .png extension (expected image/png)."

    def test_content_differs_from_extension_and_declared(self):
        exc = refused(corpus.png(), "logo.jpg", "image/jpeg")
        assert exc.detail == "The file's content is not a JPEG image. It looks like a PNG image."

    def test_all_three_differ(self):
        exc = refused(corpus.gif(), "logo.webp", "image/png")
        assert exc.reason == "declared_type_mismatch"

    def test_octet_stream_is_not_a_type(self):
        assert refused(corpus.png(), "logo.png", "application/octet-stream").status == 415

    def test_missing_declared_type(self):
        exc = refused(corpus.png(), "logo.png", None)
        assert (exc.status, exc.reason) == (415, "declared_type_missing")

    def test_png_with_wrong_magic(self):
        data = b"\x88" + corpus.png()[1:]
        exc = refused(data, "logo.png", "image/png")
        assert exc.detail == "The file's content is not a PNG image."

    def test_non_utf8_charset_declared(self):
        exc = refused(corpus.TEXT, "n.txt", "text/plain; charset=iso-8859-1", KNOWLEDGE)
        assert exc.reason == "declared_charset"


class TestDisguisedExecutablesAndArchives:
    @pytest.mark.parametrize(("data", "name", "declared", "purpose", "looks_like"), [
        (corpus.EXE, "logo.png", "image/png", BRAND, "a Windows executable"),
        (corpus.ELF, "logo.gif", "image/gif", BRAND, "a Linux (ELF) executable"),
        (corpus.MACHO, "photo.jpg", "image/jpeg", KNOWLEDGE, "a macOS (Mach-O) executable"),
        (corpus.zip_archive(), "guide.pdf", "application/pdf", KNOWLEDGE, "a ZIP archive, JAR or Office document"),
        (corpus.zip_archive(jar=True), "guide.pdf", "application/pdf", KNOWLEDGE, "a ZIP archive, JAR or Office document"),
        (corpus.EXE, "notes.txt", "text/plain", KNOWLEDGE, "a Windows executable"),
        (corpus.ELF, "notes.md", "text/markdown", KNOWLEDGE, "a Linux (ELF) executable"),
        (b"#!/bin/sh\nrm -rf /\n", "notes.txt", "text/plain", KNOWLEDGE, "a script (it starts with #!)"),
        (b"#!/usr/bin/env python\n", "data.csv", "text/csv", KNOWLEDGE, "a script (it starts with #!)"),
        (b"<!DOCTYPE html><p>hi", "notes.txt", "text/plain", KNOWLEDGE, "an HTML document"),
        (corpus.pdf(), "notes.txt", "text/plain", KNOWLEDGE, "a PDF document"),
        (corpus.EXE, "logo.svg", "image/svg+xml", BRAND, "a Windows executable"),
    ])
    def test_refused_naming_what_it_is(self, data, name, declared, purpose, looks_like):
        exc = refused(data, name, declared, purpose)
        assert exc.status == 415 and exc.reason == "content_mismatch"
        assert exc.detail.endswith(f"It looks like {looks_like}.")


class TestPolyglots:
    def test_gif_javascript_polyglot(self):
        exc = refused(corpus.gif_js_polyglot(), "logo.gif", "image/gif")
        assert (exc.status, exc.reason) == (400, "polyglot_script")
        assert "also reads as JavaScript" in exc.detail

    def test_structurally_valid_gif_javascript_polyglot(self):
        assert refused(corpus.gif_js_polyglot_inside(), "logo.gif", "image/gif").reason == "polyglot_script"

    def test_gif_with_script_in_comment(self):
        exc = refused(corpus.gif(comment=b"<script>alert(1)</script>"), "logo.gif", "image/gif")
        assert exc.reason == "polyglot_html" and "HTML markup" in exc.detail

    def test_png_with_html_in_text_chunk(self):
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "<html><body onload=alert(1)>")
        assert refused(corpus.png(pnginfo=info), "logo.png", "image/png").reason == "polyglot_html"

    @pytest.mark.parametrize(("tail", "what"), [(corpus.zip_archive(), "ZIP archive"), (corpus.EXE, "Windows executable")])
    def test_jpeg_with_appended_file(self, tail, what):
        exc = refused(corpus.jpeg() + tail, "photo.jpg", "image/jpeg", KNOWLEDGE)
        assert exc.reason == "trailing_data" and what in exc.detail

    @pytest.mark.parametrize(("data", "name", "declared"), [
        (corpus.png() + corpus.zip_archive(), "logo.png", "image/png"),
        (corpus.gif() + b"<script>alert(1)</script>", "logo.gif", "image/gif"),
        (corpus.webp() + corpus.EXE, "logo.webp", "image/webp"),
    ])
    def test_other_images_with_appended_data(self, data, name, declared):
        assert refused(data, name, declared).reason == "trailing_data"

    def test_zero_padding_after_the_end_is_harmless_and_not_kept(self):
        data = corpus.jpeg() + b"\x00" * 32
        assert inspect(data, "photo.jpg", "image/jpeg").content.endswith(b"\xff\xd9")

    def test_zip_hidden_before_the_end_of_a_jpeg(self):
        # A ZIP reader finds the archive by its end record near the end of the file; here it sits in
        # a comment segment, so the JPEG structure itself is intact.
        payload = corpus.zip_archive()
        jpeg = corpus.jpeg()
        comment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
        exc = refused(jpeg[:2] + comment + jpeg[2:], "photo.jpg", "image/jpeg")
        assert exc.reason == "polyglot_zip"

    def test_pdf_html_polyglot_in_first_kilobyte(self):
        data = corpus.pdf(header=b"%<html><body><script>alert(document.domain)</script></body></html>\n")
        exc = refused(data, "guide.pdf", "application/pdf", KNOWLEDGE)
        assert (exc.status, exc.reason) == (400, "polyglot_html")
        assert "HTML tags in its first 1 KB" in exc.detail

    def test_pdf_with_html_tag_beyond_first_kilobyte(self):
        data = corpus.pdf(text=b"x" * 2000 + b"<script>alert(1)</script>")
        assert refused(data, "guide.pdf", "application/pdf", KNOWLEDGE).reason == "polyglot_html"

    def test_pdf_with_appended_zip(self):
        exc = refused(corpus.pdf() + corpus.zip_archive(), "guide.pdf", "application/pdf", KNOWLEDGE)
        assert exc.reason == "trailing_data"

    @pytest.mark.parametrize("action", [
        b"<< /Type /Action /S /JavaScript /JS (app.alert(1)) >>",
        b"<< /Type /Action /S /J#61vaScript /JS (app.alert(1)) >>",  # a name spelled with #xx escapes
        b"<< /Type /Action /S /Launch /F (cmd.exe) >>",
        b"<< /EmbeddedFiles << /Names [(x.exe) 7 0 R] >> >>",
    ])
    def test_pdf_with_active_content(self, action):
        exc = refused(corpus.pdf(extra_objects=(action,)), "guide.pdf", "application/pdf", KNOWLEDGE)
        assert exc.reason == "pdf_active_content"

    def test_pdf_without_end_marker(self):
        assert refused(corpus.pdf()[:-7], "guide.pdf", "application/pdf", KNOWLEDGE).reason == "malformed"


class TestImagesMustDecode:
    def test_decompression_bomb(self):
        data = corpus.png_bomb()
        assert len(data) < 100_000  # tiny file...
        exc = refused(data, "logo.png", "image/png")
        assert (exc.status, exc.reason) == (400, "too_many_pixels")  # ...refused before anything is decoded
        assert "20000 × 20000" in exc.detail

    def test_just_over_the_pixel_budget(self):
        side = int(MAX_IMAGE_PIXELS**0.5) + 1
        out = io.BytesIO()
        Image.new("1", (side, side)).save(out, "PNG")
        assert refused(out.getvalue(), "logo.png", "image/png").reason == "too_many_pixels"

    def test_bomb_gif_declared_in_the_frame(self):
        # The logical screen says 1 × 1; the image descriptor says 16000 × 16000.
        side = (16000).to_bytes(2, "little")
        data = (b"GIF89a" + b"\x01\x00\x01\x00\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
                + b"\x2c\x00\x00\x00\x00" + side + side + b"\x00" + b"\x02\x02\x4c\x01\x00" + b"\x3b")
        assert refused(data, "logo.gif", "image/gif").reason == "too_many_pixels"

    @pytest.mark.parametrize(("make", "name", "declared"), [
        (corpus.png, "logo.png", "image/png"),
        (corpus.jpeg, "logo.jpg", "image/jpeg"),
        (corpus.webp, "logo.webp", "image/webp"),
        (corpus.gif, "logo.gif", "image/gif"),
    ])
    def test_truncated(self, make, name, declared):
        data = make()
        assert refused(data[: len(data) * 2 // 3], name, declared).reason in ("malformed", "undecodable")

    def test_corrupt_pixel_data(self):
        data = bytearray(corpus.png())
        idat = data.index(b"IDAT")
        data[idat + 8 : idat + 20] = b"\x00" * 12  # CRC no longer matches
        assert refused(bytes(data), "logo.png", "image/png").reason == "undecodable"


class TestText:
    def test_nul_bytes(self):
        exc = refused(b"name,amount\x00\n", "x.csv", "text/csv", KNOWLEDGE)
        assert (exc.status, exc.detail) == (400, "Text files must not contain NUL bytes.")

    def test_invalid_utf8(self):
        assert refused("Äpfel".encode("latin-1"), "x.txt", "text/plain", KNOWLEDGE).reason == "not_utf8"

    @pytest.mark.parametrize("control", ["\x1b[31m", "\x07", "\x7f", "\u0085"])
    def test_control_characters(self, control):
        assert refused(f"a{control}b".encode(), "x.txt", "text/plain", KNOWLEDGE).reason == "control_characters"

    @pytest.mark.parametrize("text", ["# Title\n<script>alert(1)</script>", "a\n<HTML>", "x <iframe src=//evil>"])
    def test_html_markup_in_text(self, text):
        assert refused(text.encode(), "x.md", "text/markdown", KNOWLEDGE).reason == "polyglot_html"

    def test_empty(self):
        assert refused(b"", "x.txt", "text/plain", KNOWLEDGE).reason == "empty"


class TestSvgThroughInspect:
    def test_stored_form_is_the_sanitised_one(self):
        result = inspect(corpus.SVG_XSS["onload"], "logo.svg", "image/svg+xml")
        assert b"onload" not in result.content and result.svg_removed == ("@onclick", "@onload")

    @pytest.mark.parametrize("data", [corpus.BILLION_LAUGHS, corpus.XXE, corpus.XXE_EXTERNAL_DTD])
    def test_dtd_refused(self, data):
        exc = refused(data, "logo.svg", "image/svg+xml")
        assert (exc.status, exc.detail) == (400, "SVG with a DTD is refused.")


class TestFileNames:
    @pytest.mark.parametrize(("raw", "clean"), [
        ("logo.png", "logo.png"),
        ("../../etc/passwd.png", "passwd.png"),
        ("C:\\Users\\me\\logo.png", "logo.png"),
        ("  .hidden logo.png. ", "hidden logo.png"),
        ("evil\u202egnp.exe", "evilgnp.exe"),  # the bidi override that made it read "evilexe.png"
        ("zero\u200bwidth.png", "zerowidth.png"),
        ("a\r\nX-Evil: 1.png", "aX-Evil_ 1.png"),  # no header injection through the name
        ('q"uo<te>.png', "q_uo_te_.png"),
        ("Cafe\u0301.png", "Café.png"),  # NFC
    ])
    def test_cleaned(self, raw, clean):
        assert clean_filename(raw) == clean

    def test_bounded_keeping_the_extension(self):
        name = clean_filename("a" * 1000 + ".png")
        assert len(name) == 200 and name.endswith(".png")

    def test_bidi_trick_cannot_smuggle_an_extension(self):
        assert refused(corpus.EXE, "invoice\u202egnp.exe", "image/png").reason == "extension_not_allowed"

    @pytest.mark.parametrize("raw", [None, "", " . ", "\u202e"])
    def test_no_usable_name(self, raw):
        assert refused(corpus.png(), raw, "image/png").reason == "no_filename"
