"""What an upload really is: the name, the declared Content-Type and the bytes must all agree.

Nothing the client says is believed on its own. The extension picks the one type the file may be
(from the purpose's allow-list), the declared Content-Type and the magic bytes must confirm it, and
the content is then read the way that type is read: images walked block by block, decoded by
Pillow and encoded again from their pixels alone (`reencode`: metadata and trailing bytes never
stored; still images only), PDFs checked for a clean end, SVG parsed and rebuilt from allow-lists (`app.uploads.svg`),
text decoded as UTF-8. Anything that also reads as something else — HTML, JavaScript, an archive,
an executable — is refused, because a browser, a mail gateway or a desktop tool downstream may read
it that way whatever we serve it as.

Every refusal is an `UploadRefused` with a sentence for the caller and a stable `reason` code for
the audit trail. No FastAPI here.
"""

from __future__ import annotations

import io
import re
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

from app.errors import DomainError
from app.uploads import svg

MiB = 1024 * 1024
# Brand assets are logos and the like; the knowledge cap is `settings.upload_max_bytes`.
BRAND_ASSET_MAX_BYTES = 2 * MiB
# Decoded size bounds: a tiny file can declare huge dimensions (a decompression bomb). 25 MP is a
# 5000 × 5000 image, about 100 MB decoded as RGBA.
MAX_IMAGE_PIXELS = 25_000_000
MAX_IMAGE_SIDE = 16_384
MAX_FRAMES = 1_000
MAX_ANIMATION_PIXELS = 4 * MAX_IMAGE_PIXELS
FILENAME_MAX_CHARS = 200

# Pillow's own guard (warning above this, DecompressionBombError above twice this) behind ours:
# the structure walk below refuses oversized images before Pillow sees them.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class Purpose(StrEnum):
    brand_asset = "brand_asset"
    knowledge = "knowledge"


@dataclass(frozen=True)
class FileType:
    key: str
    label: str  # "a PNG image": reads in "The file's content is not {label}."
    media_type: str  # what is stored and served; never the declared type
    extensions: tuple[str, ...]
    declared: frozenset[str]  # Content-Types a client may declare for it
    inline: bool = False  # served inline (raster images only); everything else is an attachment

    @property
    def is_text(self) -> bool:
        return self.media_type.startswith("text/")

    @property
    def served_type(self) -> str:
        return f"{self.media_type}; charset=utf-8" if self.is_text else self.media_type


PNG = FileType("png", "a PNG image", "image/png", (".png",), frozenset({"image/png"}), inline=True)
JPEG = FileType("jpeg", "a JPEG image", "image/jpeg", (".jpg", ".jpeg"), frozenset({"image/jpeg", "image/jpg", "image/pjpeg"}), inline=True)
WEBP = FileType("webp", "a WebP image", "image/webp", (".webp",), frozenset({"image/webp"}), inline=True)
GIF = FileType("gif", "a GIF image", "image/gif", (".gif",), frozenset({"image/gif"}), inline=True)
SVG = FileType("svg", "an SVG image", "image/svg+xml", (".svg",), frozenset({"image/svg+xml"}))
PDF = FileType("pdf", "a PDF document", "application/pdf", (".pdf",), frozenset({"application/pdf", "application/x-pdf"}))
TEXT = FileType("text", "plain text", "text/plain", (".txt",), frozenset({"text/plain"}))
# Many clients know no type for .md and .csv and send text/plain; Windows with Excel installed
# sends application/vnd.ms-excel for .csv. The content decides anyway: it must be UTF-8 text.
MARKDOWN = FileType("markdown", "Markdown text", "text/markdown", (".md", ".markdown"),
                    frozenset({"text/markdown", "text/x-markdown", "text/plain"}))
CSV = FileType("csv", "CSV text", "text/csv", (".csv",),
               frozenset({"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"}))

ALLOWED: dict[Purpose, tuple[FileType, ...]] = {
    Purpose.brand_asset: (PNG, JPEG, WEBP, GIF, SVG),
    Purpose.knowledge: (PDF, TEXT, MARKDOWN, CSV, PNG, JPEG),
}
# Every type the table may hold (the migration's check constraint lists the same).
MEDIA_TYPES = tuple(sorted({t.media_type for types in ALLOWED.values() for t in types}))
_RASTER = {PNG.key, JPEG.key, WEBP.key, GIF.key}
_PILLOW_FORMAT = {PNG.key: "PNG", JPEG.key: "JPEG", WEBP.key: "WEBP", GIF.key: "GIF"}


class UploadRefused(DomainError):
    """The upload is refused; `detail` is for the caller, `reason` a stable code for the audit trail."""

    def __init__(self, detail: str, *, reason: str, status: int = 400) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


def _unsupported(detail: str, reason: str) -> UploadRefused:
    return UploadRefused(detail, reason=reason, status=415)


@dataclass(frozen=True)
class RawUpload:
    """The one file part of the request, as received (bounded by the cap), or why it was not."""

    filename: str | None
    declared_type: str | None
    data: bytes
    refusal: UploadRefused | None = None


@dataclass(frozen=True)
class Inspected:
    file_type: FileType
    filename: str
    content: bytes  # what is stored: the upload itself (PDF, text), the rebuilt SVG, the re-encoded image
    svg_removed: tuple[str, ...] = ()
    # Raster images: what the upload carried that the stored copy does not ("exif", "comment"...).
    image_removed: tuple[str, ...] = ()


def max_bytes(purpose: Purpose, upload_max_bytes: int) -> int:
    """The largest file accepted for `purpose`."""
    return min(BRAND_ASSET_MAX_BYTES, upload_max_bytes) if purpose is Purpose.brand_asset else upload_max_bytes


def too_large(purpose: Purpose, limit: int) -> UploadRefused:
    what = "A brand asset" if purpose is Purpose.brand_asset else "A knowledge file"
    return UploadRefused(f"{what} may be at most {limit} bytes.", reason="too_large", status=413)


def inspect_upload(*, purpose: Purpose, filename: str | None, declared_type: str | None, data: bytes) -> Inspected:
    """Decide what the upload is and whether it may be stored; raise `UploadRefused` if not."""
    name = clean_filename(filename)
    file_type = _type_from_name(purpose, name)
    _check_declared(file_type, declared_type)
    if not data:
        raise UploadRefused("The file is empty.", reason="empty")
    if file_type is SVG:
        try:
            result = svg.sanitise(_refuse_binary_svg(data))
        except svg.SvgRefused as exc:
            raise UploadRefused(exc.detail, reason=exc.reason) from None
        return Inspected(file_type=SVG, filename=name, content=result.content, svg_removed=result.removed)
    _check_magic(file_type, data)
    _CHECKS[file_type.key](file_type, data)
    if file_type.key in _RASTER:
        content, removed = reencode(file_type, data)
        return Inspected(file_type=file_type, filename=name, content=content, image_removed=removed)
    return Inspected(file_type=file_type, filename=name, content=data)


# --- names and declared types -------------------------------------------------------------------

_UNSAFE_IN_NAME = re.compile(r'[<>:"|?*]')
_WHITESPACE = re.compile(r"\s+")


def clean_filename(raw: str | None) -> str:
    """The last path segment, NFC, without control/format characters (bidi overrides too), bounded."""
    if raw is None:
        raise UploadRefused("The file part has no file name.", reason="no_filename")
    name = re.split(r"[/\\]", unicodedata.normalize("NFC", raw))[-1]
    # Category C: controls, format characters (bidi overrides, zero-width), surrogates, unassigned.
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = _WHITESPACE.sub(" ", _UNSAFE_IN_NAME.sub("_", name)).strip(" .")
    if not name:
        raise UploadRefused("The file part has no usable file name.", reason="no_filename")
    if len(name) > FILENAME_MAX_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and len(ext) <= 16:
            name = stem[: FILENAME_MAX_CHARS - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            name = name[:FILENAME_MAX_CHARS]
    return name


def _type_from_name(purpose: Purpose, name: str) -> FileType:
    allowed = ALLOWED[purpose]
    accepted = ", ".join(ext for t in allowed for ext in t.extensions)
    what = "a brand asset" if purpose is Purpose.brand_asset else "a knowledge file"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        raise _unsupported(f"The file name needs an extension; accepted as {what}: {accepted}.", "no_extension")
    suffix = "." + ext.lower()
    for file_type in allowed:
        if suffix in file_type.extensions:
            return file_type
    shown = suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else "this"
    raise _unsupported(f"Files with the {shown} extension are not accepted as {what}; accepted: {accepted}.",
                       "extension_not_allowed")


def _check_declared(file_type: FileType, declared: str | None) -> None:
    ext = file_type.extensions[0]
    if not declared:
        raise _unsupported(f"The file part must declare its Content-Type ({file_type.media_type} for {ext}).",
                           "declared_type_missing")
    media_type, _, params = declared.partition(";")
    if media_type.strip().lower() not in file_type.declared:
        # The declared value itself is never echoed back.
        raise _unsupported(
            f"The declared Content-Type does not match the {ext} extension (expected {file_type.media_type}).",
            "declared_type_mismatch",
        )
    if file_type.is_text:
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8", "us-ascii"):
                raise _unsupported("Text files must be UTF-8; the declared charset is not.", "declared_charset")


# --- magic bytes --------------------------------------------------------------------------------

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "a Linux (ELF) executable"),
    (b"\xfe\xed\xfa\xce", "a macOS (Mach-O) executable"),
    (b"\xfe\xed\xfa\xcf", "a macOS (Mach-O) executable"),
    (b"\xce\xfa\xed\xfe", "a macOS (Mach-O) executable"),
    (b"\xcf\xfa\xed\xfe", "a macOS (Mach-O) executable"),
    (b"\xca\xfe\xba\xbe", "a macOS universal binary or a Java class file"),
    (b"#!", "a script (it starts with #!)"),
    (b"PK\x03\x04", "a ZIP archive, JAR or Office document"),
    (b"PK\x05\x06", "a ZIP archive"),
    (b"PK\x07\x08", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office (OLE) document"),
    (b"\x00asm", "a WebAssembly module"),
    (b"{\\rtf", "an RTF document"),
)
# The WHATWG MIME sniffing HTML patterns (a tag name followed by a space or `>`), case-insensitive.
_HTML_TAGS = re.compile(
    rb"<(?:!doctype\s+html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p|!--)(?=[\s>])", re.I
)
_BOM_AND_SPACE = b"\xef\xbb\xbf \t\r\n\x0c"


def sniff(data: bytes) -> str | None:
    """What the leading bytes say the file is, as a phrase ("a ZIP archive"), or None."""
    for signature, label in _SIGNATURES:
        if data.startswith(signature):
            return label
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    head = data[:1024].lstrip(_BOM_AND_SPACE)
    if _HTML_TAGS.match(head):
        return "an HTML document"
    if head[:5].lower() == b"<?xml" or head[:4].lower() == b"<svg":
        return "an XML or SVG document"
    return None


def _magic_matches(file_type: FileType, data: bytes) -> bool:
    if file_type is PNG:
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if file_type is JPEG:
        return data.startswith(b"\xff\xd8\xff")
    if file_type is GIF:
        return data[:6] in (b"GIF87a", b"GIF89a")
    if file_type is WEBP:
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if file_type is PDF:
        return data.startswith(b"%PDF-")
    # Text has no signature of its own: it must not carry anybody else's.
    return sniff(data) is None


def _check_magic(file_type: FileType, data: bytes) -> None:
    if _magic_matches(file_type, data):
        return
    seen = sniff(data)
    detail = f"The file's content is not {file_type.label}." + (f" It looks like {seen}." if seen else "")
    raise _unsupported(detail, "content_mismatch")


def _refuse_binary_svg(data: bytes) -> bytes:
    seen = sniff(data)
    if seen is not None and seen != "an XML or SVG document":
        raise _unsupported(f"The file's content is not an SVG image. It looks like {seen}.", "content_mismatch")
    return data


# --- polyglots, shared by the binary types ------------------------------------------------------

# Markup that makes a file also an HTML document wherever it sits ("<html"/"<script" anywhere).
_MARKUP = re.compile(rb"<(?:script|html|iframe|object|embed)[\s/>]", re.I)
_ZIP_END = b"PK\x05\x06"
# A ZIP reader looks for its end-of-central-directory record in the last 64 KiB + 22 bytes.
_ZIP_END_WINDOW = 65_557
_PADDING = re.compile(rb"[\x00\xff]*")


def _refuse_polyglot(file_type: FileType, data: bytes) -> None:
    if _MARKUP.search(data):
        raise UploadRefused(f"The file is {file_type.label} that also contains HTML markup (a polyglot); it is refused.",
                            reason="polyglot_html")
    if _ZIP_END in data[-_ZIP_END_WINDOW:]:
        raise UploadRefused(f"The file is {file_type.label} that also contains a ZIP archive (a polyglot); it is refused.",
                            reason="polyglot_zip")


def _refuse_trailing(file_type: FileType, data: bytes, end: int) -> None:
    # Zero or 0xFF padding after the end is harmless (some encoders write it); anything else is a
    # second file riding along: an archive, an executable, a script.
    trailing = data[end:]
    if trailing and not _PADDING.fullmatch(trailing):
        seen = sniff(trailing.lstrip(_BOM_AND_SPACE))
        also = f" (it looks like {seen})" if seen else ""
        raise UploadRefused(f"The file is {file_type.label} with data appended after its end{also}; it is refused.",
                            reason="trailing_data")


# --- raster images --------------------------------------------------------------------------------


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class _Geometry:
    end: int  # offset just past the image's last byte
    width: int
    height: int
    frames: int


def _walk_png(data: bytes) -> _Geometry:
    pos, n, size, frames = 8, len(data), None, 1
    while pos + 12 <= n:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise _Malformed
        body, end = pos + 8, pos + 12 + length
        if end > n:
            raise _Malformed
        if size is None:
            if kind != b"IHDR" or length != 13:
                raise _Malformed
            size = struct.unpack(">II", data[body : body + 8])
        elif kind == b"acTL" and length >= 8:  # APNG: the number of frames
            frames = max(1, struct.unpack(">I", data[body : body + 4])[0])
        pos = end
        if kind == b"IEND":
            assert size is not None
            return _Geometry(pos, size[0], size[1], frames)
    raise _Malformed


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    n = len(data)
    while True:
        if pos >= n:
            raise _Malformed
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _walk_gif(data: bytes) -> _Geometry:
    n = len(data)
    if n < 13:
        raise _Malformed
    width, height, packed = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 * (2 << (packed & 7)) if packed & 0x80 else 0)
    frames = 0
    while True:
        if pos >= n:
            raise _Malformed
        introducer = data[pos]
        if introducer == 0x3B:  # trailer
            if frames == 0:
                raise _Malformed
            return _Geometry(pos + 1, width, height, frames)
        if introducer == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif introducer == 0x2C:  # image descriptor
            if pos + 10 > n:
                raise _Malformed
            left, top, fw, fh, fpacked = struct.unpack("<HHHHB", data[pos + 1 : pos + 10])
            pos += 10 + (3 * (2 << (fpacked & 7)) if fpacked & 0x80 else 0) + 1  # + LZW minimum code size
            pos = _skip_sub_blocks(data, pos)
            # A frame outside the logical screen grows the canvas (as Pillow does).
            width, height, frames = max(width, left + fw), max(height, top + fh), frames + 1
        else:
            raise _Malformed


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _walk_jpeg(data: bytes) -> _Geometry:
    n, pos, size = len(data), 2, None
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise _Malformed
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _Malformed
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # end of image
            if size is None:
                raise _Malformed
            return _Geometry(pos, size[1], size[0], 1)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if marker in (0x00, 0xD8) or pos + 2 > n:
            raise _Malformed
        length = struct.unpack(">H", data[pos : pos + 2])[0]
        if length < 2 or pos + length > n:
            raise _Malformed
        if marker in _SOF:
            if length < 7:
                raise _Malformed
            size = struct.unpack(">HH", data[pos + 3 : pos + 7])  # height, width
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            if size is None:
                raise _Malformed
            while True:
                at = data.find(b"\xff", pos)
                if at < 0 or at + 1 >= n:
                    raise _Malformed
                following = data[at + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:  # stuffed byte, restart marker
                    pos = at + 2
                    continue
                pos = at
                break


_WEBP_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP", b"EXIF", b"XMP "}


def _walk_webp(data: bytes) -> _Geometry:
    n = len(data)
    if n < 20:
        raise _Malformed
    end = 8 + struct.unpack("<I", data[4:8])[0]
    if end > n:
        raise _Malformed
    pos, size, frames = 12, None, 0
    while pos < end:
        if pos + 8 > end:
            raise _Malformed
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        body = pos + 8
        if kind not in _WEBP_CHUNKS or body + length > end:
            raise _Malformed
        chunk = data[body : body + length]
        if kind == b"VP8X" and length >= 10:
            size = (1 + int.from_bytes(chunk[4:7], "little"), 1 + int.from_bytes(chunk[7:10], "little"))
        elif kind == b"VP8L" and size is None and length >= 5 and chunk[0] == 0x2F:
            bits = int.from_bytes(chunk[1:5], "little")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif kind == b"VP8 " and size is None and length >= 10 and chunk[3:6] == b"\x9d\x01\x2a":
            size = (int.from_bytes(chunk[6:8], "little") & 0x3FFF, int.from_bytes(chunk[8:10], "little") & 0x3FFF)
        elif kind == b"ANMF":
            frames += 1
        pos = body + length + (length & 1)
    if size is None:
        raise _Malformed
    return _Geometry(end, size[0], size[1], max(frames, 1))


_WALKERS: dict[str, Callable[[bytes], _Geometry]] = {
    PNG.key: _walk_png, GIF.key: _walk_gif, JPEG.key: _walk_jpeg, WEBP.key: _walk_webp,
}


def _check_image(file_type: FileType, data: bytes) -> None:
    # A JavaScript comment opener in the first bytes is how GIF/JPEG/WebP-and-JavaScript polyglots
    # start (`GIF89a/*...*/=alert(1)`): the header then parses as an identifier and a comment.
    if b"/*" in data[:16]:
        raise UploadRefused(f"The file is {file_type.label} whose header also reads as JavaScript (a polyglot); it is refused.",
                            reason="polyglot_script")
    try:
        geometry = _WALKERS[file_type.key](data)
    except (_Malformed, struct.error):
        raise UploadRefused(f"The file is not a well-formed {file_type.label.partition(' ')[2]}: it is truncated or corrupt.",
                            reason="malformed") from None
    _refuse_trailing(file_type, data, geometry.end)
    _refuse_polyglot(file_type, data)
    _check_dimensions(geometry.width, geometry.height, geometry.frames)
    if geometry.frames > 1:
        raise _animated()
    _decode(file_type, data)


def _animated() -> UploadRefused:
    # Re-encoding an animation faithfully (timing, disposal, blending) and within memory (every
    # frame decoded at once) is more than a logo needs: still images only.
    return _unsupported("Animated images are not accepted: upload a still image.", "animated")


def _check_dimensions(width: int, height: int, frames: int) -> None:
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise UploadRefused(
            f"The image is too large: {width} × {height} pixels (at most {MAX_IMAGE_SIDE:,} a side and "
            f"{MAX_IMAGE_PIXELS:,} pixels in all).", reason="too_many_pixels")
    if frames > MAX_FRAMES or frames * width * height > MAX_ANIMATION_PIXELS:
        raise UploadRefused(f"The animation is too large: {frames} frames of {width} × {height} pixels.",
                            reason="too_many_pixels")


def _decode(file_type: FileType, data: bytes) -> None:
    """Pillow must parse it as exactly this format (`formats=`: no other plugin is tried) and decode it."""
    fmt = _PILLOW_FORMAT[file_type.key]
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            _check_dimensions(im.width, im.height, 1)
            im.verify()
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            im.load()
    except UploadRefused:
        raise
    except Image.DecompressionBombError:
        raise UploadRefused("The image is too large when decoded.", reason="too_many_pixels") from None
    except Exception:
        # Pillow reports corrupt input through many exception types (OSError, SyntaxError,
        # ValueError, struct.error, EOFError...); whichever it is, the image did not decode.
        raise UploadRefused(f"The file could not be decoded as {file_type.label}.", reason="undecodable") from None


# --- re-encoding ----------------------------------------------------------------------------------

# What an upload may carry besides pixels that can say something about a person or hide a payload,
# by Pillow's `info` key, named in the audit trail when found. None of it is kept, and neither is
# anything else (resolution, gamma, application blocks): only the pixels are encoded again.
_METADATA = ("exif", "comment", "xmp", "XML:com.adobe.xmp", "icc_profile", "photoshop")
# A real display or camera profile is a few KiB (sRGB ~3 KiB, Display P3 ~0.5 KiB); past this it
# is not worth parsing.
MAX_ICC_PROFILE_BYTES = 64 * 1024
JPEG_QUALITY = 95


def reencode(file_type: FileType, data: bytes) -> tuple[bytes, tuple[str, ...]]:
    """The image as new bytes from its pixels alone, and what of the upload was left behind.

    Decoding and encoding again drops everything that is not the picture: EXIF (camera, GPS
    position, thumbnail), comments, XMP, PNG text chunks, any bytes after the image data. The EXIF
    orientation is applied first, so a photo stays upright without the tag. An ICC profile is
    applied (the pixels converted to sRGB, which is what a viewer assumes without one) and then
    dropped; one that cannot be parsed, is too large or does not fit the image is dropped as it is.
    PNG, GIF and lossless WebP stay lossless; JPEG and lossy WebP are encoded at quality 95 (JPEG
    with its original chroma subsampling).
    """
    fmt = _PILLOW_FORMAT[file_type.key]
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise _animated()
            im.load()
            removed = _carried(im)
            subsampling = JpegImagePlugin.get_sampling(im) if fmt == "JPEG" else -1
            lossless_webp = fmt == "WEBP" and b"VP8L" in data[12:40]
            icc = im.info.get("icc_profile")
            transparency = im.info.get("transparency")
            upright = ImageOps.exif_transpose(im)
        pixels = _to_srgb(upright, icc) if icc else upright
        if pixels.mode == "P" and transparency is not None and fmt in ("PNG", "GIF"):
            pixels.info = {"transparency": transparency}
        else:
            pixels.info = {}
        out = io.BytesIO()
        options: dict[str, object] = {}
        if fmt == "JPEG":
            options = {"quality": JPEG_QUALITY, "optimize": True}
            if subsampling >= 0:
                options["subsampling"] = subsampling
        elif fmt == "WEBP":
            options = {"lossless": True, "exact": True} if lossless_webp else {"quality": JPEG_QUALITY}
        elif fmt == "PNG":
            options = {"optimize": False}
        elif fmt == "GIF" and transparency is not None and pixels.mode == "P":
            options = {"transparency": transparency}
        if fmt == "PNG" and pixels.mode == "P" and transparency is not None:
            options["transparency"] = transparency
        pixels.save(out, fmt, **options)
    except UploadRefused:
        raise
    except Exception:
        raise UploadRefused(f"The file could not be decoded as {file_type.label}.", reason="undecodable") from None
    return out.getvalue(), removed


def _carried(im: Image.Image) -> tuple[str, ...]:
    """What the upload carried besides pixels, by kind (for the audit trail)."""
    found = {key for key in _METADATA if im.info.get(key)}
    if "XML:com.adobe.xmp" in found:
        found = (found - {"XML:com.adobe.xmp"}) | {"xmp"}
    if getattr(im, "text", None):  # PNG tEXt, zTXt, iTXt
        found.add("text")
    exif = im.getexif()
    if exif:
        found.add("exif")
        if exif.get_ifd(0x8825):
            found.add("gps")
    return tuple(sorted(found))


def _to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """The pixels converted from the embedded profile to sRGB; unchanged if the profile is unusable."""
    if len(icc) > MAX_ICC_PROFILE_BYTES or im.mode not in ("RGB", "RGBA"):
        return im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if source.profile.xcolor_space.strip() != "RGB":
            return im
        converted = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode=im.mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im
    return converted if converted is not None else im


# --- PDF ----------------------------------------------------------------------------------------

_PDF_HEADER = re.compile(rb"%PDF-[12]\.[0-9]")
_PDF_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
# Names that make a PDF run code, launch programs or carry other files. Best effort, not a PDF
# sanitiser: a name inside a compressed object stream (PDF 1.5+) is not seen. What is served is
# still an attachment with `Content-Security-Policy: sandbox`.
_PDF_ACTIVE = re.compile(rb"/(JavaScript|Launch|EmbeddedFiles?|RichMedia)(?=[\s/<>\[\]()%{}]|$)")


def _check_pdf(file_type: FileType, data: bytes) -> None:
    if not _PDF_HEADER.match(data):
        raise UploadRefused("The PDF header is not valid.", reason="malformed")
    eof = data.rfind(b"%%EOF")
    if eof < 0:
        raise UploadRefused("The PDF is incomplete: it has no %%EOF end marker.", reason="malformed")
    if data[eof + 5 :].strip(b" \t\r\n\x0c\x00"):
        _refuse_trailing(file_type, data, eof + 5)
    # Browsers (and older sniffers) look for HTML in the first bytes of what they fetch.
    if _HTML_TAGS.search(data[:1024]):
        raise UploadRefused("The PDF also reads as HTML: it has HTML tags in its first 1 KB (a polyglot); it is refused.",
                            reason="polyglot_html")
    _refuse_polyglot(file_type, data)
    active = _PDF_ACTIVE.search(_PDF_NAME_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data))
    if active:
        raise UploadRefused(f"PDFs with active content (/{active.group(1).decode()}) are refused.", reason="pdf_active_content")


# --- text ---------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x01-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_MARKUP_TEXT = re.compile(r"<(?:script|html|iframe|object|embed)[\s/>]", re.I)


def _check_text(file_type: FileType, data: bytes) -> None:
    if b"\x00" in data:
        raise UploadRefused("Text files must not contain NUL bytes.", reason="nul_bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadRefused("The file is not valid UTF-8 text.", reason="not_utf8") from None
    if _CONTROL.search(text):
        raise UploadRefused("Text files must not contain control characters (other than tab, line breaks and form feed).",
                            reason="control_characters")
    if _MARKUP_TEXT.search(text):
        raise UploadRefused("Text files must not contain HTML markup (<script>, <html>, <iframe>, <object>, <embed>).",
                            reason="polyglot_html")


_CHECKS: dict[str, Callable[[FileType, bytes], None]] = {
    **{key: _check_image for key in _RASTER},
    PDF.key: _check_pdf,
    TEXT.key: _check_text,
    MARKDOWN.key: _check_text,
    CSV.key: _check_text,
}
