"""Images in chat requests (``image_url`` content parts), checked here, in the server's own
process, before anything reaches a model's process or native code.

A ``data:`` URL is decoded with images.py (PNG, JPEG or WebP; bounded in bytes and pixels; a
corrupt image is a 400 with the one-line reason). An ``http(s)`` URL is refused unless the server
was started with ``--allow-image-urls`` (then fetched with a timeout and a size bound); every other
scheme (``file:``, ``ftp:`` ...) is always refused: the server never reads what a client names
(SSRF). At most :data:`MAX_IMAGES` images and :data:`MAX_REQUEST_PIXELS` pixels per request.

The model's process gets each image as the bytes the client sent (smaller than its pixels), and
decodes them again with the same checks before mtmd sees anything (child.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import images
from ..errors import LlmrunError
from .schemas import ApiError, ChatRequest, ImagePart

if TYPE_CHECKING:
    from .worker import Engine, ModelSpec

MAX_IMAGES = 16  # per request
MAX_REQUEST_PIXELS = images.MAX_PIXELS  # all the images of one request together


@dataclass(frozen=True)
class Checked:
    """An image that decoded within the bounds: the bytes as sent, and what they hold."""

    data: bytes = field(repr=False)
    width: int
    height: int
    where: str  # messages[i].content[j]


async def gather(req: ChatRequest, spec: ModelSpec, *, allow_urls: bool,
                 parallel: int) -> tuple[list[dict[str, Any]], list[Checked]]:
    """The request's messages as the template gets them (each image part becomes the media
    marker, in place) and its images, checked; ApiError (400) for anything refused."""
    found = [(i, j, part) for i, m in enumerate(req.messages) for j, part in m.images()]
    if not found:
        return [m.as_dict() for m in req.messages], []
    i, j, _ = found[0]
    first = f"messages[{i}].content[{j}].image_url"
    if spec.mmproj is None:
        raise ApiError(400, f"model {spec.name} has no vision projector: it cannot take images",
                       param=first, code="model_has_no_vision")
    if parallel > 1:
        raise ApiError(400, f"images are not supported with --parallel {parallel}: this server "
                            "decodes requests together; serve vision models with --parallel 1",
                       param=first, code="unsupported_content")
    if len(found) > MAX_IMAGES:
        raise ApiError(400, f"{len(found)} images in one request; the limit is {MAX_IMAGES}",
                       param="messages", code="too_many_images")
    checked = await asyncio.to_thread(_check_all, found, allow_urls)
    return [_with_markers(m.as_dict()) for m in req.messages], checked


def _check_all(found: list[tuple[int, int, ImagePart]], allow_urls: bool) -> list[Checked]:
    out: list[Checked] = []
    pixels = 0
    for i, j, part in found:
        image = _check(part.url, f"messages[{i}].content[{j}]", allow_urls)
        pixels += image.width * image.height
        if pixels > MAX_REQUEST_PIXELS:
            raise ApiError(400, f"the images of one request may have "
                                f"{MAX_REQUEST_PIXELS // 1_000_000} megapixels in all",
                           param=f"{image.where}.image_url", code="image_too_large")
        out.append(image)
    return out


def _check(url: str, where: str, allow_urls: bool) -> Checked:
    param = f"{where}.image_url"
    scheme = url.split(":", 1)[0].lower() if ":" in url[:16] else ""
    try:
        if scheme == "data":
            data = images.data_url_bytes(url, where)
        elif scheme in ("http", "https"):
            if not allow_urls:
                raise ApiError(400, f"image {where}: remote image URLs are fetched only when the "
                                    "server is started with --allow-image-urls; send the image "
                                    "as a data: URL", param=param, code="image_url_not_allowed")
            data = images.fetch_bytes(url, source=where)
        else:
            shown = f"{scheme}:" if scheme else "no scheme"
            raise ApiError(400, f"image {where}: only data: URLs (and http(s) URLs where the "
                                f"server allows them) are accepted, not {shown}",
                           param=param, code="invalid_image_url")
        image = images.decode(data, where)
    except LlmrunError as exc:  # bounds, format, corrupt, fetch failed: one line
        raise ApiError(400, exc.message, param=param, code="invalid_image") from None
    return Checked(data, image.width, image.height, where)


def _with_markers(message: dict[str, Any]) -> dict[str, Any]:
    """A message of an image request with its content as one string: text parts (the marker
    taken out: text cannot stand for an image) and one media marker per image, in order,
    joined by lines (as images.with_images makes them for run and chat)."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": images.strip_marker(content)}
    if not isinstance(content, list):
        return message
    lines = [images.MEDIA_MARKER if part.get("type") == "image_url"
             else images.strip_marker(str(part.get("text", ""))) for part in content]
    return {**message, "content": "\n".join(lines)}


def with_images(engine: Engine, found: list[Checked]) -> Engine:
    """The engine seen through its projector for one request's images: the model's process
    (child.ChildEngine.with_images) or engine/vision.py's VisionEngine for a model loaded in
    this process."""
    attach = getattr(engine, "with_images", None)
    if attach is not None:
        view: Engine = attach([image.data for image in found])
        return view
    from typing import cast

    from ..engine.vision import VisionEngine

    decoded = [images.decode(image.data, image.where) for image in found]
    return cast("Engine", VisionEngine(engine, decoded))

