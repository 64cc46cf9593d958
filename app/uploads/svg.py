"""SVG sanitiser: parse safely, keep only what is on the allow-lists, and write a new document.

The upload is parsed with defusedxml, which refuses any DTD (so entity expansion — billion laughs —
and external entities — XXE — never happen). The tree is then rebuilt from allow-lists: SVG
elements that only draw, and attributes that only describe geometry and paint. Everything else is
dropped rather than escaped: scripts, `foreignObject`, animation (`animate`/`set` can rewrite an
`href` to `javascript:` after the fact), event handlers (`on*`), links and references leaving the
document, raster `image`s, styles that fetch or execute, comments and processing instructions
(the parser never hands those over). What is stored and served is the serialisation of that
rebuilt tree, never the uploaded bytes, so a parser differential between us and a browser cannot
smuggle anything through: anything we did not understand is not in the output.

Sanitising is idempotent: the output sanitises to itself.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden, NotSupportedError
from defusedxml import ElementTree as SafeET

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# Bounds on the tree: a logo is tens to a few thousand elements, rarely 20 levels deep. The
# depth bound also keeps the (recursive) rebuild far from Python's recursion limit.
MAX_DEPTH = 100
MAX_ELEMENTS = 50_000
# How many distinct removals the audit event lists.
MAX_REMOVED_LISTED = 50

ELEMENTS = frozenset({
    "svg", "g", "defs", "symbol", "use", "title", "desc", "a", "style",
    "path", "rect", "circle", "ellipse", "line", "polyline", "polygon",
    "text", "tspan", "textPath",
    "linearGradient", "radialGradient", "stop", "pattern", "clipPath", "mask", "marker",
    "filter", "feBlend", "feColorMatrix", "feComponentTransfer", "feComposite", "feConvolveMatrix",
    "feDiffuseLighting", "feDisplacementMap", "feDistantLight", "feDropShadow", "feFlood", "feFuncA",
    "feFuncB", "feFuncG", "feFuncR", "feGaussianBlur", "feMerge", "feMergeNode", "feMorphology",
    "feOffset", "fePointLight", "feSpecularLighting", "feSpotLight", "feTile", "feTurbulence",
})  # fmt: skip

ATTRIBUTES = frozenset({
    # identity, structure, accessibility
    "id", "class", "lang", "xml:lang", "xml:space", "role", "aria-label", "aria-labelledby",
    "aria-describedby", "aria-hidden", "version",
    # same-document references only (checked below)
    "href", "xlink:href",
    # geometry and coordinate systems
    "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "rx", "ry", "fx", "fy", "fr", "width", "height",
    "d", "points", "pathLength", "transform", "viewBox", "preserveAspectRatio",
    # paint and presentation
    "style", "fill", "fill-opacity", "fill-rule", "stroke", "stroke-width", "stroke-linecap",
    "stroke-linejoin", "stroke-miterlimit", "stroke-dasharray", "stroke-dashoffset", "stroke-opacity",
    "opacity", "color", "display", "visibility", "overflow", "clip-path", "clip-rule", "mask", "filter",
    "paint-order", "vector-effect", "shape-rendering", "text-rendering", "image-rendering",
    "color-interpolation", "color-interpolation-filters", "mix-blend-mode", "isolation",
    # gradients, patterns, clipping, masking, markers
    "gradientUnits", "gradientTransform", "spreadMethod", "offset", "stop-color", "stop-opacity",
    "patternUnits", "patternContentUnits", "patternTransform", "clipPathUnits", "maskUnits",
    "maskContentUnits", "markerWidth", "markerHeight", "markerUnits", "refX", "refY", "orient",
    "marker-start", "marker-mid", "marker-end",
    # text
    "font-family", "font-size", "font-weight", "font-style", "font-variant", "font-stretch",
    "text-anchor", "dominant-baseline", "alignment-baseline", "baseline-shift", "letter-spacing",
    "word-spacing", "text-decoration", "writing-mode", "direction", "unicode-bidi", "dx", "dy", "rotate",
    "textLength", "lengthAdjust", "startOffset", "method", "spacing", "side",
    # filter primitives
    "filterUnits", "primitiveUnits", "in", "in2", "result", "stdDeviation", "mode", "operator", "k1",
    "k2", "k3", "k4", "type", "values", "tableValues", "slope", "intercept", "amplitude", "exponent",
    "flood-color", "flood-opacity", "lighting-color", "surfaceScale", "diffuseConstant",
    "specularConstant", "specularExponent", "kernelUnitLength", "azimuth", "elevation", "pointsAtX",
    "pointsAtY", "pointsAtZ", "limitingConeAngle", "baseFrequency", "numOctaves", "seed",
    "stitchTiles", "scale", "xChannelSelector", "yChannelSelector", "radius", "order", "kernelMatrix",
    "divisor", "bias", "targetX", "targetY", "edgeMode", "preserveAlpha", "z",
})  # fmt: skip

# `#id`: a reference into this document; nothing else may be fetched or navigated to.
_LOCAL_REF = re.compile(r"#[A-Za-z_][A-Za-z0-9_.:-]*")
_LOCAL_URL = re.compile(r"""url\((?:"#[a-z_][\w.:-]*"|'#[a-z_][\w.:-]*'|#[a-z_][\w.:-]*)\)""")
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
# Anything in CSS that fetches, executes or can spell either in disguise: backslash escapes
# (`\75 rl(`), markup, every at-rule (@import, @font-face...), and the fetching functions.
_CSS_FORBIDDEN = (
    "\\", "<", "@", "expression(", "javascript:", "vbscript:", "data:", "behavior", "-moz-binding",
    "image-set(", "image(", "cross-fade(", "element(", "src(", "paint(",
)  # fmt: skip
_URL_SCHEMES = ("javascript:", "vbscript:", "data:")
_SQUASH = re.compile(r"[\s\x00-\x20]+")
_XML_DECL_ENCODING = re.compile(r"""^\s*<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


class SvgRefused(ValueError):
    """The SVG cannot be made safe (or is no SVG); `reason` is a stable code for the audit trail."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


@dataclass(frozen=True)
class SanitisedSvg:
    content: bytes
    # What was dropped, by name (`script`, `@onload`...), for the audit trail.
    removed: tuple[str, ...]


def sanitise(data: bytes) -> SanitisedSvg:
    """Parse `data` without DTDs or entities and rebuild it from the allow-lists."""
    root = _parse(data)
    if _local_name(root) != "svg":
        raise SvgRefused("The file's content is not an SVG image.", reason="content_mismatch")
    count = 0
    for _ in root.iter():
        count += 1
        if count > MAX_ELEMENTS:
            raise SvgRefused(f"The SVG has more than {MAX_ELEMENTS} elements.", reason="svg_too_complex")
    writer = _Writer()
    body = writer.element(root, depth=0)
    assert body is not None  # the root is `svg`, which is allowed
    return SanitisedSvg(content=body.encode("utf-8"), removed=tuple(sorted(writer.removed))[:MAX_REMOVED_LISTED])


def css_is_safe(css: str) -> bool:
    """CSS that neither fetches nor executes; `url(#id)` (a gradient, a clip path) is allowed."""
    # Checked with whitespace and control characters squeezed out, as lenient parsers read it.
    squashed = _SQUASH.sub("", _CSS_COMMENT.sub("", css)).lower()
    if "/*" in squashed or "*/" in squashed:
        return False
    if any(token in squashed for token in _CSS_FORBIDDEN):
        return False
    return _only_local_urls(squashed)


def _only_local_urls(squashed: str) -> bool:
    """Every `url(` (in lower-cased, whitespace-free text) is a same-document `url(#id)`."""
    return squashed.count("url(") == len(_LOCAL_URL.findall(squashed))


def _parse(data: bytes) -> ET.Element:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SvgRefused("The SVG must be UTF-8 encoded.", reason="not_utf8") from None
    declared = _XML_DECL_ENCODING.match(text.lstrip("\ufeff"))
    if declared and declared.group(1).lower().replace("_", "-") not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise SvgRefused("The SVG must be UTF-8 encoded.", reason="not_utf8")
    # Comments and processing instructions inside the root are kept in the tree only so that
    # their removal is reported; those before the root never reach it.
    parser = SafeET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True),
                              forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(data)
        return parser.close()
    except DTDForbidden:
        raise SvgRefused("SVG with a DTD is refused.", reason="svg_dtd") from None
    except EntitiesForbidden:
        raise SvgRefused("SVG with entity declarations is refused.", reason="svg_entities") from None
    except (ExternalReferenceForbidden, NotSupportedError):
        raise SvgRefused("SVG with external references is refused.", reason="svg_external") from None
    except (ET.ParseError, ValueError):
        raise SvgRefused("The SVG is not well-formed XML.", reason="svg_malformed") from None


def _local_name(el: ET.Element) -> str | None:
    """The element's name if it is in the SVG namespace (or in none); None for anything foreign."""
    tag = el.tag
    if not isinstance(tag, str):
        return None
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return local if namespace == SVG_NS else None
    return tag


def _attribute_name(key: str) -> str | None:
    if key.startswith("{"):
        namespace, _, local = key[1:].partition("}")
        if namespace == XLINK_NS and local == "href":
            return "xlink:href"
        if namespace == XML_NS and local in ("space", "lang"):
            return f"xml:{local}"
        return None
    return key


def _label(key: str) -> str:
    return key.rpartition("}")[2] if key.startswith("{") else key


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(value: str) -> str:
    # Whitespace characters as references, so the parser's attribute normalisation cannot change them.
    return _text(value).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;")


class _Writer:
    def __init__(self) -> None:
        self.removed: set[str] = set()
        self.uses_xlink = False

    def element(self, el: ET.Element, *, depth: int) -> str | None:
        """The element rebuilt, or None when it is dropped (its tail is the caller's)."""
        if depth > MAX_DEPTH:
            raise SvgRefused(f"The SVG is nested more than {MAX_DEPTH} levels deep.", reason="svg_too_complex")
        if el.tag is ET.Comment or el.tag is ET.ProcessingInstruction:
            self.removed.add("comment" if el.tag is ET.Comment else "processing-instruction")
            return None
        name = _local_name(el)
        if name not in ELEMENTS:
            self.removed.add(_label(str(el.tag)))
            return None
        if name == "style" and (len(el) or not css_is_safe(el.text or "")):
            self.removed.add("style")
            return None
        attributes = self.attributes(el)
        inner = [_text(el.text or "")]
        for child in el:
            rebuilt = self.element(child, depth=depth + 1)
            if rebuilt is not None:
                inner.append(rebuilt)
            inner.append(_text(child.tail or ""))
        if depth == 0:
            namespaces = f' xmlns="{SVG_NS}"' + (f' xmlns:xlink="{XLINK_NS}"' if self.uses_xlink else "")
            attributes = namespaces + attributes
        content = "".join(inner)
        return f"<{name}{attributes}>{content}</{name}>" if content else f"<{name}{attributes}/>"

    def attributes(self, el: ET.Element) -> str:
        out = []
        for key, value in el.attrib.items():
            name = _attribute_name(key)
            if name is None or name not in ATTRIBUTES:
                self.removed.add("@" + _label(key))
                continue
            cleaned = _checked_value(name, value)
            if cleaned is None:
                self.removed.add("@" + name)
                continue
            if name == "xlink:href":
                self.uses_xlink = True
            out.append(f' {name}="{_attr(cleaned)}"')
        return "".join(out)


def _checked_value(name: str, value: str) -> str | None:
    """The value to keep, or None when the attribute must go."""
    squashed = _SQUASH.sub("", value).lower()
    if any(scheme in squashed for scheme in _URL_SCHEMES):
        return None
    if name in ("href", "xlink:href"):
        return value.strip() if _LOCAL_REF.fullmatch(value.strip()) else None
    if name == "style":
        return value if css_is_safe(value) else None
    if not _only_local_urls(squashed):
        return None
    return value
