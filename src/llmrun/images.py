"""Images for vision models, checked in Python before anything reaches native code.

llama.cpp's mtmd decodes what it is given with stb_image and, failing that, pipes the bytes to
an ``ffprobe``/``ffmpeg`` found on PATH (a build with video support). So nothing but pixels
llmrun has decoded itself goes to mtmd: an image is opened with Pillow, its format must be PNG,
JPEG or WebP, its size is bounded in bytes and in pixels (before decoding: a decompression
bomb is refused from its header), it is decoded, turned upright (EXIF) and converted to RGB,
and mtmd gets the raw RGB pixels (engine/vision.py). A corrupt image is one clear error.

Also here: the media marker that stands for an image in a prompt (user text may not contain
it), data: URLs, and fetching an http(s) URL with bounds (only where the user allowed it)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NetworkError, UsageError

MEDIA_MARKER = "<__media__>"  # mtmd_default_marker(); engine/vision.py checks they agree
FORMATS = ("PNG", "JPEG", "WEBP")
MAX_BYTES = 20 * 2**20  # an encoded image
MAX_PIXELS = 50_000_000  # width x height
FETCH_TIMEOUT_S = 10.0
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,",
                       re.I)


@dataclass(frozen=True)
class Image:
    """A decoded, checked image: RGB pixels, row by row."""

    width: int
    height: int
    rgb: bytes = field(repr=False)
    source: str  # what the user gave, for messages
    digest: str = ""  # sha256 of the pixels: the image's identity in a prompt cache

    def png(self) -> bytes:
        """The image as a PNG (client mode sends it to a server as a data: URL)."""
        from PIL import Image as PILImage

        out = io.BytesIO()
        PILImage.frombytes("RGB", (self.width, self.height), self.rgb).save(out, "PNG")
        return out.getvalue()

    def data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")


def decode(data: bytes, source: str) -> Image:
    """Check and decode an encoded image; UsageError (exit 2) with one line when it is not a
    PNG, JPEG or WebP within the bounds, or cannot be decoded."""
    if len(data) > MAX_BYTES:
        raise UsageError(f"image {source} is {len(data)} bytes; the limit is "
                         f"{MAX_BYTES // 2**20} MiB")
    if not data:
        raise UsageError(f"image {source} is empty")
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # Pillow warns of large images; the bound is ours
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            img = PILImage.open(io.BytesIO(data), formats=list(FORMATS))
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise UsageError(f"image {source} is {width}x{height} pixels; the limit is "
                                 f"{MAX_PIXELS // 1_000_000} megapixels")
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = upright.convert("RGB")
    except UsageError:
        raise
    except PILImage.DecompressionBombError:
        raise UsageError(f"image {source} has more than {MAX_PIXELS // 1_000_000} megapixels"
                         ) from None
    except UnidentifiedImageError:
        raise UsageError(f"image {source} is not a PNG, JPEG or WebP image") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise UsageError(f"image {source} is corrupt or truncated ({exc})") from None
    pixels = rgb.tobytes()
    if rgb.width * rgb.height == 0 or len(pixels) != rgb.width * rgb.height * 3:
        raise UsageError(f"image {source} has no pixels")
    return Image(rgb.width, rgb.height, pixels, source, hashlib.sha256(pixels).hexdigest())


def read_file(path: Path) -> Image:
    """An image file, read with a bound on its size."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    return decode(data, str(path))


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://", "data:"))


def from_data_url(url: str, source: str = "in the request") -> Image:
    """A ``data:[image/...];base64,...`` URL."""
    return decode(data_url_bytes(url, source), source)


def data_url_bytes(url: str, source: str = "in the request") -> bytes:
    """The encoded image a ``data:`` URL holds (not decoded: see decode)."""
    found = _DATA_URL.match(url)
    if found is None:
        raise UsageError(f"image {source}: a data: URL must be base64 "
                         "(data:image/png;base64,...)")
    kind = (found["type"] or "image/png").lower()
    if not kind.startswith("image/"):
        raise UsageError(f"image {source}: a data: URL of {kind}, not an image")
    body = url[found.end():]
    if len(body) > MAX_BYTES * 4 // 3 + 4:
        raise UsageError(f"image {source} is larger than {MAX_BYTES // 2**20} MiB")
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"image {source}: the data: URL is not valid base64") from None
    return data


def fetch(url: str, *, source: str | None = None, timeout: float = FETCH_TIMEOUT_S,
          max_bytes: int = MAX_BYTES) -> Image:
    """An http(s) URL, fetched with a timeout and a bound on its size (redirects only to
    http(s), at most 3). Only where the user allowed remote images (SSRF)."""
    return decode(fetch_bytes(url, source=source, timeout=timeout, max_bytes=max_bytes),
                  source or url)


def fetch_bytes(url: str, *, source: str | None = None, timeout: float = FETCH_TIMEOUT_S,
                max_bytes: int = MAX_BYTES) -> bytes:
    """What fetch() downloads, not decoded."""
    import httpx

    name = source or url
    if not url.lower().startswith(("http://", "https://")):
        raise UsageError(f"image {name}: only http(s) URLs can be fetched")
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=3) as client, \
                client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise NetworkError(f"image {name}: the server answered {resp.status_code}")
            data = bytearray()
            for chunk in resp.iter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise UsageError(f"image {name} is larger than {max_bytes // 2**20} MiB")
    except httpx.HTTPError as exc:
        raise NetworkError(f"cannot fetch image {name}: {type(exc).__name__}") from None
    return bytes(data)


def load(text: str, *, allow_urls: bool) -> Image:
    """What ``--image`` names: a file, a data: URL, or (with ``allow_urls``) an http(s) URL."""
    if text.lower().startswith("data:"):
        return from_data_url(text, "given as a data: URL")
    if is_url(text):
        if not allow_urls:
            raise UsageError(f"image {text}: a URL is fetched only with --allow-image-urls")
        return fetch(text)
    return read_file(Path(text).expanduser())


def strip_marker(text: str) -> str:
    """User text with the media marker taken out: typed in, it would stand for an image."""
    return text.replace(MEDIA_MARKER, "") if MEDIA_MARKER in text else text


def with_images(text: str, count: int) -> str:
    """A user message's content with ``count`` images before its text, as one string with a
    marker per image (as image_url parts become, formats.messages joining parts by lines)."""
    return "\n".join([MEDIA_MARKER] * count + [strip_marker(text)])
