"""The SVG sanitiser: attack vectors neutralised, entity tricks refused, clean drawings kept."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from app.uploads.svg import MAX_DEPTH, SVG_NS, SvgRefused, css_is_safe, sanitise
from tests.uploads import corpus

NS = {"s": SVG_NS}


def shapes(svg: bytes) -> dict[str, int]:
    root = ET.fromstring(svg)
    return {tag: len(root.findall(f".//s:{tag}", NS)) for tag in ("rect", "circle", "path", "text", "stop", "use")}


class TestCleanDrawingsSurvive:
    def test_shapes_gradients_and_text_are_kept(self):
        result = sanitise(corpus.CLEAN_SVG)
        assert shapes(result.content) == shapes(corpus.CLEAN_SVG) == {"rect": 2, "circle": 1, "path": 1, "text": 1, "stop": 2, "use": 1}
        assert result.removed == ()
        root = ET.fromstring(result.content)
        assert root.get("viewBox") == "0 0 120 60"
        assert root.find(".//s:rect[@fill='url(#brand)']", NS) is not None
        assert root.find(".//s:g", NS).get("clip-path") == "url(#clip)"
        assert root.find(".//s:circle", NS).get("style") == "stroke:#000;stroke-width:2"
        assert root.find(".//s:use", NS).get("{http://www.w3.org/1999/xlink}href") == "#dot"
        assert root.find(".//s:text", NS).text == "ACME & Co"

    def test_comments_and_declaration_are_dropped(self):
        out = sanitise(corpus.CLEAN_SVG).content
        assert b"<!--" not in out and b"<?xml" not in out

    def test_idempotent(self):
        once = sanitise(corpus.CLEAN_SVG).content
        assert sanitise(once).content == once

    def test_svg_without_namespace_is_given_one(self):
        out = sanitise(b'<svg viewBox="0 0 1 1"><rect width="1" height="1"/></svg>').content
        assert out == b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 1"><rect width="1" height="1"/></svg>'


class TestAttackVectorsAreNeutralised:
    @pytest.mark.parametrize("name", sorted(corpus.SVG_XSS))
    def test_nothing_dangerous_is_left(self, name):
        result = sanitise(corpus.SVG_XSS[name])
        lowered = result.content.lower()
        assert [t for t in corpus.SVG_XSS_TOKENS if t in lowered] == []
        assert result.removed, "a removal must be reported"
        assert sanitise(result.content).content == result.content
        ET.fromstring(result.content)  # still well-formed

    def test_what_was_removed_is_named(self):
        assert sanitise(corpus.SVG_XSS["script"]).removed == ("script",)
        assert sanitise(corpus.SVG_XSS["onload"]).removed == ("@onclick", "@onload")
        assert sanitise(corpus.SVG_XSS["foreign_object"]).removed == ("foreignObject",)
        assert sanitise(corpus.SVG_XSS["animate_href"]).removed == ("animate",)

    def test_safe_parts_next_to_the_attack_stay(self):
        out = sanitise(corpus.SVG_XSS["script"]).content
        assert out == b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>'
        out = sanitise(corpus.SVG_XSS["javascript_href"]).content
        assert shapes(out)["text"] == 2

    def test_text_that_looks_like_markup_stays_text(self):
        out = sanitise(b'<svg xmlns="http://www.w3.org/2000/svg"><text>&lt;script&gt;alert(1)&lt;/script&gt;</text></svg>').content
        assert b"<script" not in out and ET.fromstring(out).find("s:text", NS).text == "<script>alert(1)</script>"


class TestRefused:
    @pytest.mark.parametrize("data", [corpus.BILLION_LAUGHS, corpus.XXE, corpus.XXE_EXTERNAL_DTD,
                                      b'<!DOCTYPE svg><svg xmlns="http://www.w3.org/2000/svg"/>'])
    def test_any_dtd(self, data):
        with pytest.raises(SvgRefused) as caught:
            sanitise(data)
        assert (caught.value.reason, caught.value.detail) == ("svg_dtd", "SVG with a DTD is refused.")

    @pytest.mark.parametrize(("data", "reason"), [
        (b"<svg xmlns='http://www.w3.org/2000/svg'><rect></svg>", "svg_malformed"),
        (b"<html xmlns='http://www.w3.org/1999/xhtml'/>", "content_mismatch"),
        (b"<svg xmlns='http://example.com/not-svg'/>", "content_mismatch"),
        ('<?xml version="1.0" encoding="ISO-8859-1"?><svg/>'.encode(), "not_utf8"),
        ("<svg><text>Äpfel</text></svg>".encode("latin-1"), "not_utf8"),
        (b"<svg>" + b"<g>" * (MAX_DEPTH + 1) + b"</g>" * (MAX_DEPTH + 1) + b"</svg>", "svg_too_complex"),
    ])
    def test_unusable(self, data, reason):
        with pytest.raises(SvgRefused) as caught:
            sanitise(data)
        assert caught.value.reason == reason


class TestCss:
    @pytest.mark.parametrize("css", ["fill:red", "rect { fill: url(#g) } .a > .b { stroke: none }", "fill: url('#a')"])
    def test_safe(self, css):
        assert css_is_safe(css)

    @pytest.mark.parametrize("css", [
        "fill:url(https://evil/)", "fill: URL( javascript:alert(1) )", "@import 'x.css'", "x{behavior:url(#a)}",
        "width: expression(alert(1))", "background: \\75 rl(x)", "fill: u/**/rl(https://evil)",
        "background: image-set('https://evil/a.png' 1x)", "a{b:c} /* unterminated", "fill:url(data:image/png;base64,AA)",
        "</style><script>alert(1)</script>",
    ])
    def test_unsafe(self, css):
        assert not css_is_safe(css)
