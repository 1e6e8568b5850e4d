"""The seed corpora: small images of every accepted format and shape of request, built deterministically.

    python -m fuzz.make_corpus        # (re)writes fuzz/corpus/{image,request,http}/seed-*

Images: JPEG (baseline, progressive, greyscale, CMYK, EXIF-rotated, 4:4:4), PNG (RGB, RGBA, palette with
transparency, LA, 16-bit, 1-bit, interlaced), GIF (still, animated, transparent), WebP (lossy,
lossless with alpha), BMP (24-bit, 8-bit palette, 32-bit), TIFF (RGB, LZW, 16-bit, CMYK, float,
two pages), two refused formats (ICO, PPM), and the photos of tests/data. Requests: one selector
byte (fuzz.pick: path and content type) and then the body. HTTP: raw requests for http11.py.
"""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
from PIL import Image

from fuzz import BOUNDARY, CONTENT_TYPES, CORPUS, PATHS

PHOTOS = CORPUS.parent.parent / "tests" / "data"


def picture(width: int = 48, height: int = 32, mode: str = "RGB") -> Image.Image:
    """A small picture with edges and gradients (so encoders use more than one code path)."""
    rng = np.random.default_rng(width * 1000 + height)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x ^ y) * 8 % 256], -1)
    rgb = (rgb + rng.integers(0, 24, rgb.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_seeds() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6                                   # Orientation: rotate 90
    return {"baseline.jpg": encode(picture(), "JPEG", quality=80),
            "progressive.jpg": encode(picture(64, 40), "JPEG", progressive=True),
            "grey.jpg": encode(picture(mode="L"), "JPEG"),
            "cmyk.jpg": encode(picture(mode="CMYK"), "JPEG"),
            "exif-rotated.jpg": encode(picture(40, 24), "JPEG", exif=exif),
            "subsampling-444.jpg": encode(picture(), "JPEG", subsampling=0, quality=95)}


def png_seeds() -> dict[str, bytes]:
    rgba = picture(mode="RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    palette = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    sixteen = Image.fromarray((np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16))
    return {"rgb.png": encode(picture(), "PNG"), "rgba.png": encode(rgba, "PNG"),
            "palette-transparent.png": encode(palette, "PNG", transparency=3),
            "la.png": encode(rgba.convert("LA"), "PNG"), "grey16.png": encode(sixteen, "PNG"),
            "bilevel.png": encode(picture(mode="1"), "PNG"), "interlaced.png": encode(picture(), "PNG", interlace=1)}


def other_seeds() -> dict[str, bytes]:
    frames = [picture(32, 32).convert("P"), picture(32, 32).rotate(90).convert("P")]
    rgba = picture(mode="RGBA")
    sixteen = Image.fromarray((np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16))
    floats = Image.fromarray(np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48))
    return {"still.gif": encode(picture().convert("P"), "GIF"),
            "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
            "transparent.gif": encode(frames[0], "GIF", transparency=0),
            "lossy.webp": encode(picture(), "WEBP", quality=70),
            "lossless-alpha.webp": encode(rgba, "WEBP", lossless=True),
            "rgb24.bmp": encode(picture(), "BMP"), "palette8.bmp": encode(picture().convert("P"), "BMP"),
            "rgba32.bmp": encode(rgba, "BMP"),
            "rgb.tiff": encode(picture(), "TIFF"), "lzw.tiff": encode(picture(), "TIFF", compression="tiff_lzw"),
            "grey16.tiff": encode(sixteen, "TIFF"), "cmyk.tiff": encode(picture(mode="CMYK"), "TIFF"),
            "float.tiff": encode(floats, "TIFF"),
            "two-pages.tiff": encode(picture(), "TIFF", save_all=True, append_images=[picture(24, 24)]),
            "refused.ico": encode(picture(32, 32), "ICO"), "refused.ppm": encode(picture(16, 16), "PPM")}


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def selector(path: str, content_type: str) -> bytes:
    return bytes([PATHS.index(path) + len(PATHS) * CONTENT_TYPES.index(content_type)])


def request_seeds(images: dict[str, bytes]) -> dict[str, bytes]:
    png, jpeg, gif = images["rgb.png"], images["baseline.jpg"], images["still.gif"]
    form, as_json = CONTENT_TYPES[0], CONTENT_TYPES[1]
    b64 = base64.b64encode(png).decode()
    seeds = {
        "multipart-png": selector("/predict", form) + multipart([("image", "a.png", png)]),
        "multipart-jpeg-top-k-model": selector("/predict", form) + multipart(
            [("image", "a.jpg", jpeg), ("top_k", None, b"3"), ("model", None, b"efficientnet_lite0")]),
        "multipart-versioned": selector("/v1/models/efficientnet_lite0/versions/1/predict", form)
        + multipart([("image", "a.gif", gif)]),
        "multipart-no-image": selector("/predict", form) + multipart([("file", "a.png", png)]),
        "multipart-pipeline": selector("/v1/pipelines/face_crops/predict", form)
        + multipart([("image", "a.jpg", jpeg)]),
        "json-png": selector("/predict", as_json) + json.dumps({"image": b64}).encode(),
        "json-data-url": selector("/predict?top_k=2", as_json)
        + json.dumps({"image": "data:image/png;base64," + b64, "top_k": 2}).encode(),
        "json-model": selector("/v1/models/efficientnet_lite0/predict", as_json)
        + json.dumps({"image": b64, "model": "efficientnet_lite0", "version": 1}).encode(),
        "json-not-a-string": selector("/predict", as_json) + b'{"image": [1, 2, 3], "top_k": "x"}',
        "urlencoded": selector("/predict", CONTENT_TYPES[2]) + b"top_k=3&model=efficientnet_lite0",
    }
    return seeds


def http_seeds() -> dict[str, bytes]:
    head = b"POST /predict?top_k=3 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nUser-Agent: curl/8.5\r\n"
    return {"get": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
            "http10": b"GET /v1/models HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "length": head + b"Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"image\": \"\"}",
            "expect": head + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
            "chunked": head + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\n"
                              b"Trailer: x\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "absolute-form": b"GET http://example.test/predict?x=%2F HTTP/1.1\r\nHost: example.test\r\n\r\n"}


def write(folder, seeds: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for name, data in seeds.items():
        (folder / f"seed-{name}").write_bytes(data)


def main() -> None:
    images = {**jpeg_seeds(), **png_seeds(), **other_seeds()}
    write(CORPUS / "image", images)
    for photo in sorted(PHOTOS.glob("*.jpg")):
        shutil.copyfile(photo, CORPUS / "image" / f"seed-photo-{photo.name}")
    write(CORPUS / "request", request_seeds(images))
    write(CORPUS / "http", http_seeds())
    print(f"wrote {len(images)} + photos image seeds and {len(request_seeds(images))} request seeds under {CORPUS}")


if __name__ == "__main__":
    main()
