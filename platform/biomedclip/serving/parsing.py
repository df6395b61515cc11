"""Turns an HTTP request (multipart form or JSON) into a validated input, or a RequestError naming what was wrong.

Multipart: the image as file field `image` (repeatable on /v1/embed), texts as repeated form fields (`labels`,
`templates`, `texts`) or single ones (`question`, `model`). JSON: the same names, with `image_base64` /
`images_base64` holding base64 image files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from biomedclip.serving.config import LimitsConfig
from biomedclip.serving.errors import RequestError
from biomedclip.serving.schemas import EmbedInput, EmbedJson, VqaInput, VqaJson, ZeroShotInput, ZeroShotJson
from biomedclip.serving.validation import check_templates, check_text, check_texts, decode_base64, decode_image

FORM_OVERHEAD_BYTES = 256 * 1024  # text fields and multipart framing around the images
BASE64_GROWTH = 4 / 3


@dataclass
class RawRequest:
    """Images as (field name, bytes) and text fields as lists, whichever way the request came."""
    images: list[tuple[str, bytes]] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)

    def text_list(self, name: str) -> list[str]:
        return self.texts.get(name, [])

    def single_text(self, name: str, required: bool) -> str | None:
        values = self.texts.get(name, [])
        if len(values) > 1:
            raise RequestError(422, name, f"given {len(values)} times, expected once")
        if not values and required:
            raise RequestError(422, name, "missing")
        return values[0] if values else None


async def parse_zero_shot(request: Request, limits: LimitsConfig) -> ZeroShotInput:
    raw = await read_request(request, limits, ZeroShotJson, max_images=1,
                             text_fields={"labels", "templates", "model"})
    templates = raw.text_list("templates")
    return ZeroShotInput(
        image=_one_image(raw, limits),
        labels=check_texts(raw.text_list("labels"), "labels", limits, limits.max_labels, unique=True),
        templates=check_templates(templates, limits) if templates else None,
        model=raw.single_text("model", required=False),
    )


async def parse_vqa(request: Request, limits: LimitsConfig) -> VqaInput:
    raw = await read_request(request, limits, VqaJson, max_images=1, text_fields={"question"})
    return VqaInput(image=_one_image(raw, limits),
                    question=check_text(raw.single_text("question", required=True), "question", limits))


async def parse_embed(request: Request, limits: LimitsConfig) -> EmbedInput:
    raw = await read_request(request, limits, EmbedJson, max_images=limits.max_images,
                             text_fields={"texts", "model"})
    if not raw.images and not raw.text_list("texts"):
        raise RequestError(422, "image/texts", "nothing to embed: give at least one image or one text")
    texts = raw.text_list("texts")
    return EmbedInput(
        images=[decode_image(data, limits, name) for name, data in raw.images],
        texts=check_texts(texts, "texts", limits, limits.max_texts) if texts else [],
        model=raw.single_text("model", required=False),
    )


def _one_image(raw: RawRequest, limits: LimitsConfig):
    if not raw.images:
        raise RequestError(422, "image", "missing: send the image as multipart file field 'image' "
                                         "or as 'image_base64' in a JSON body")
    name, data = raw.images[0]
    return decode_image(data, limits, name)


async def read_request(request: Request, limits: LimitsConfig, json_schema: type[BaseModel], max_images: int,
                       text_fields: set[str]) -> RawRequest:
    max_bytes = int(max_images * limits.max_image_bytes * BASE64_GROWTH) + FORM_OVERHEAD_BYTES
    _check_declared_length(request, max_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_form(request, limits, max_images, text_fields)
    if content_type == "application/json":
        return await _read_json(request, json_schema, limits, max_bytes, max_images)
    raise RequestError(415, "content-type", f"{content_type or 'none'} is not accepted; send "
                                            "multipart/form-data or application/json")


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, "body", f"{declared} bytes is over the limit of {max_bytes} bytes for this request")


async def _read_form(request: Request, limits: LimitsConfig, max_images: int, text_fields: set[str]) -> RawRequest:
    raw = RawRequest()
    max_fields = limits.max_labels + limits.max_templates + limits.max_texts + 4
    async with request.form(max_files=max_images, max_fields=max_fields) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "image":
                    raise RequestError(422, name, "unexpected file field (images go in the field 'image')")
                data = await value.read(limits.max_image_bytes + 1)
                raw.images.append((f"image[{len(raw.images)}]" if max_images > 1 else "image", data))
            elif name in text_fields:
                raw.texts.setdefault(name, []).append(value)
            else:
                raise RequestError(422, name, f"unknown field (expected: image, {', '.join(sorted(text_fields))})")
    return raw


async def _read_json(request: Request, schema: type[BaseModel], limits: LimitsConfig, max_bytes: int,
                     max_images: int) -> RawRequest:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestError(413, "body", f"over the limit of {max_bytes} bytes for this request")
    try:
        parsed = schema.model_validate(json.loads(body))
    except json.JSONDecodeError as err:
        raise RequestError(422, "body", f"not valid JSON ({err.msg} at position {err.pos})") from err
    except ValidationError as err:
        first = err.errors()[0]
        raise RequestError(422, ".".join(map(str, first["loc"])) or "body", first["msg"]) from err
    values = parsed.model_dump(exclude_none=True)
    images = values.pop("images_base64", None) or ([values.pop("image_base64")] if "image_base64" in values else [])
    if len(images) > max_images:
        raise RequestError(422, "images_base64", f"{len(images)} given, the limit is {max_images}")
    raw = RawRequest()
    for i, text in enumerate(images):
        name = f"images_base64[{i}]" if "images_base64" in schema.model_fields else "image_base64"
        raw.images.append((name, decode_base64(text, limits, name)))
    for name, value in values.items():
        raw.texts[name] = value if isinstance(value, list) else [value]
    return raw
