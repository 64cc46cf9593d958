"""Raster images are re-encoded on upload: what is stored and served is pixels, not the upload's bytes.

Before (issue 16, item 5): a JPEG with a PHP payload in its comment segment, and photos with EXIF
GPS positions, were accepted and served back byte for byte. Each test builds a real image with
Pillow, uploads it through the API, downloads it, and checks what a user would see: the payload and
the position are gone, the picture is the same (same dimensions, same pixels for PNG, near-same
for JPEG), and the size and sha256 the API reports are those of the bytes it serves.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageChops, ImageCms, ImageStat, PngImagePlugin
from sqlalchemy import text

from tests.support.api import World
from tests.uploads import corpus
from tests.uploads.test_files_api import assert_problem, stored, upload

PHP = b"<?php system($_GET[c]); ?>"
GPS_IFD = 0x8825
ORIENTATION = 0x0112


def _gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone 15 Pro"  # Model
    exif[0x0131] = "Camera 17.1"  # Software
    gps = exif.get_ifd(GPS_IFD)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.6)  # GPSLatitudeRef, GPSLatitude
    gps[3], gps[4] = "E", (2.0, 17.0, 40.2)  # GPSLongitudeRef, GPSLongitude
    return exif


def _photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.open(io.BytesIO(corpus.png(size=size))).convert("RGB")


def _download(world: World, meta: dict) -> bytes:
    r = world.admin.get(f"{world.ws(0)}/files/{meta['id']}/content")
    assert r.status_code == 200
    # What the API says it stored is what it serves.
    assert meta["size"] == len(r.content) and meta["sha256"] == hashlib.sha256(r.content).hexdigest()
    return r.content


def _open(data: bytes, fmt: str) -> Image.Image:
    im = Image.open(io.BytesIO(data), formats=[fmt])
    im.load()
    return im


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return max(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean)


def test_a_php_payload_in_a_jpeg_comment_is_gone(world: World):
    original = _photo()
    out = io.BytesIO()
    original.save(out, "JPEG", quality=90, comment=PHP)
    data = out.getvalue()
    assert PHP in data  # the upload carries it

    served = _download(world, stored(world.admin, world, data, "photo.jpg", "image/jpeg"))
    assert PHP not in served and b"<?php" not in served and b"system(" not in served
    im = _open(served, "JPEG")
    assert "comment" not in im.info
    assert im.size == original.size and im.mode == "RGB"
    # The same picture as the upload showed (quality 95, same chroma subsampling): on this test
    # image's hard red/blue edges the mean difference is ~3.6 of 255 per channel, most of it the
    # 4:2:0 chroma sampled again; invisible at a glance.
    assert _mean_difference(im, _open(data, "JPEG")) < 5


def test_exif_gps_and_camera_data_are_gone_and_orientation_is_applied(world: World, superuser):
    original = _photo()  # 64 × 48 pixels as stored; the camera says "rotate 90° clockwise to view"
    exif = _gps_exif()
    exif[ORIENTATION] = 6
    out = io.BytesIO()
    original.save(out, "JPEG", quality=90, exif=exif)
    data = out.getvalue()
    assert b"Phone 15 Pro" in data and _open(data, "JPEG").getexif().get_ifd(GPS_IFD)

    meta = stored(world.admin, world, data, "holiday.jpg", "image/jpeg")
    served = _download(world, meta)
    im = _open(served, "JPEG")
    assert not im.getexif() and "exif" not in im.info
    assert b"Exif" not in served and b"Phone 15 Pro" not in served and b"PhoneMaker" not in served
    # Shown upright without the tag: turned as a viewer would have turned it.
    assert im.size == (48, 64)
    assert _mean_difference(im, _open(data, "JPEG").transpose(Image.Transpose.ROTATE_270)) < 5
    # The audit trail says what was left behind (kinds, never values).
    with superuser.connect() as conn:
        details = conn.execute(text("select details from audit_events where tenant_id = :t and target_id = :f"),
                               {"t": world.tenant_id, "f": meta["id"]}).scalar_one()
    assert details["image_removed"] == ["exif", "gps"] and details["sha256"] == meta["sha256"]


def test_png_text_chunks_and_exif_are_gone_and_pixels_are_identical(world: World):
    original = Image.open(io.BytesIO(corpus.png())).convert("RGBA")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", PHP.decode())
    info.add_text("Author", "Jane Doe", zip=True)  # zTXt
    info.add_itxt("Description", "Taken at home, 12 Rue Example", lang="en")
    out = io.BytesIO()
    original.save(out, "PNG", pnginfo=info, exif=_gps_exif())
    data = out.getvalue()
    assert PHP in data and b"tEXt" in data and b"eXIf" in data

    served = _download(world, stored(world.admin, world, data, "logo.png", "image/png", purpose="brand_asset"))
    for marker in (PHP, b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"Jane Doe", b"Phone 15 Pro"):
        assert marker not in served, marker
    im = _open(served, "PNG")
    assert im.text == {} and not im.getexif()
    assert im.size == original.size and im.mode == "RGBA"
    assert ImageChops.difference(im, original).getbbox() is None  # lossless: every pixel the same


def test_webp_exif_and_xmp_are_gone(world: World):
    original = _photo()
    out = io.BytesIO()
    original.save(out, "WEBP", lossless=True, exif=_gps_exif(), xmp=b"<x:xmpmeta>" + PHP + b"</x:xmpmeta>")
    data = out.getvalue()
    assert b"EXIF" in data and PHP in data

    served = _download(world, stored(world.admin, world, data, "logo.webp", "image/webp", purpose="brand_asset"))
    assert b"EXIF" not in served and b"XMP " not in served and PHP not in served
    im = _open(served, "WEBP")
    assert im.size == original.size
    assert ImageChops.difference(im.convert("RGB"), original).getbbox() is None  # lossless stays lossless


def test_a_gif_comment_is_gone(world: World):
    im = Image.open(io.BytesIO(corpus.gif()))
    out = io.BytesIO()
    im.save(out, "GIF", comment=PHP)
    assert PHP in out.getvalue()
    served = _download(world, stored(world.admin, world, out.getvalue(), "logo.gif", "image/gif", purpose="brand_asset"))
    assert PHP not in served
    again = _open(served, "GIF")
    assert again.size == im.size and "comment" not in again.info
    assert ImageChops.difference(again.convert("RGB"), im.convert("RGB")).getbbox() is None


def test_an_icc_profile_is_converted_to_srgb_and_dropped(world: World):
    original = _photo()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    original.save(out, "JPEG", quality=90, icc_profile=srgb)
    served = _download(world, stored(world.admin, world, out.getvalue(), "photo.jpg", "image/jpeg"))
    im = _open(served, "JPEG")
    assert "icc_profile" not in im.info  # pixels are sRGB now, which is what a viewer assumes
    assert _mean_difference(im, _open(out.getvalue(), "JPEG")) < 5


def test_a_profile_that_is_not_one_is_dropped_with_the_payload(world: World):
    original = _photo()
    out = io.BytesIO()
    original.save(out, "JPEG", quality=90, icc_profile=PHP * 40)
    assert PHP in out.getvalue()
    served = _download(world, stored(world.admin, world, out.getvalue(), "photo.jpg", "image/jpeg"))
    assert PHP not in served and "icc_profile" not in _open(served, "JPEG").info
    assert _mean_difference(_open(served, "JPEG"), _open(out.getvalue(), "JPEG")) < 5


def test_padding_after_the_image_is_not_stored(world: World):
    data = corpus.jpeg() + b"\x00" * 64  # accepted (encoders write such padding), never kept
    served = _download(world, stored(world.admin, world, data, "photo.jpg", "image/jpeg"))
    assert served.endswith(b"\xff\xd9")


def test_animated_images_are_refused(world: World):
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    for fmt, name, declared in (("GIF", "a.gif", "image/gif"), ("WEBP", "a.webp", "image/webp"), ("PNG", "a.png", "image/png")):
        out = io.BytesIO()
        frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        problem = assert_problem(upload(world.admin, world, out.getvalue(), name, declared, purpose="brand_asset"), 415)
        assert problem["detail"] == "Animated images are not accepted: upload a still image."
