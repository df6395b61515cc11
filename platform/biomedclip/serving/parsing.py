"""Turns an HTTP request (multipart form or JSON) into a validated input, or a RequestError naming what was wrong.

JSON bodies are checked against the endpoint's request model (schemas.request_models: the OpenAPI contract) in strict
mode. Multipart forms carry images as file fields (`image`; `images` for a zero-shot batch; `image` repeated on
/v1/embed) and texts as form fields (repeated for lists), checked against the same model's text fields. Then the
checks no schema can make: images must decode, texts must hold more than whitespace.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from biomedclip.serving.config import LimitsConfig
from biomedclip.serving.errors import RequestError
from biomedclip.serving.schemas import (
    IMAGE_URL_PATTERN,
    EmbeddingsInput,
    EmbedInput,
    RequestModels,
    SearchInput,
    VqaInput,
    ZeroShotInput,
    base64_length,
)
from biomedclip.serving.validation import check_templates, check_text, check_texts, decode_base64, decode_image

JSON_ESCAPED_CHAR_BYTES = 12  # the most a character can take in JSON text: a surrogate pair of \uXXXX escapes
FRAMING_BYTES = 64 * 1024  # JSON keys and punctuation, multipart headers and boundaries


@dataclass
class Form:
    """A multipart form: file fields as (field name, bytes) per name, text fields as lists per name."""
    files: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)

    def values(self, list_fields: set[str], single_fields: set[str]) -> dict:
        values = {name: self.texts[name] for name in list_fields if name in self.texts}
        for name in single_fields & set(self.texts):
            if len(self.texts[name]) > 1:
                raise RequestError(422, name, f"given {len(self.texts[name])} times, expected once")
            values[name] = self.texts[name][0]
        return values

    def images(self, name: str) -> list[tuple[str, bytes]]:
        return self.files.get(name, [])


async def parse_zero_shot(request: Request, limits: LimitsConfig, models: RequestModels) -> ZeroShotInput:
    body = await read_body(request, limits, limits.max_images, file_fields={"image", "images"},
                           text_fields={"labels", "templates", "model"})
    if isinstance(body, Form):
        fields = validate(models.zero_shot_fields, body.values({"labels", "templates"}, {"model"}), strict=False)
        single, batch = body.images("image"), body.images("images")
        if len(single) > 1:
            raise RequestError(422, "image", f"given {len(single)} times; send a batch as repeated 'images' fields")
        images, shape = _exactly_one(single, batch, "image", "images")
        return _zero_shot_input(images, fields.labels, fields.templates, fields.model, shape, limits)
    if isinstance(body, dict) and "inputs" in body:
        hf = validate(models.hf_zero_shot, body)
        template = hf.parameters.hypothesis_template
        return _zero_shot_input([("inputs", decode_base64(hf.inputs, limits, "inputs"))],
                                hf.parameters.candidate_labels, [template] if template else None, None, "hf", limits,
                                labels_field="parameters.candidate_labels")
    parsed = validate(models.zero_shot, body)
    single = [("image_base64", parsed.image_base64)] if parsed.image_base64 is not None else []
    batch = [(f"images_base64[{i}]", text) for i, text in enumerate(parsed.images_base64 or [])]
    chosen, shape = _exactly_one(single, batch, "image_base64", "images_base64")
    images = [(name, decode_base64(text, limits, name)) for name, text in chosen]
    return _zero_shot_input(images, parsed.labels, parsed.templates, parsed.model, shape, limits)


def _exactly_one(single: list, batch: list, single_name: str, batch_name: str) -> tuple[list, str]:
    if bool(single) == bool(batch):
        raise RequestError(422, single_name, f"give exactly one of '{single_name}' (one image) or '{batch_name}' "
                                             f"(a batch), not {'both' if single else 'neither'}")
    return (single, "single") if single else (batch, "batch")


def _zero_shot_input(images: list[tuple[str, bytes]], labels: list[str], templates: list[str] | None,
                     model: str | None, shape: str, limits: LimitsConfig,
                     labels_field: str = "labels") -> ZeroShotInput:
    return ZeroShotInput(
        images=[decode_image(data, limits, name) for name, data in images],
        labels=check_texts(labels, labels_field, limits, limits.max_labels, unique=True),
        templates=check_templates(templates, limits) if templates else None,
        model=model, shape=shape)


async def parse_vqa(request: Request, limits: LimitsConfig, models: RequestModels) -> VqaInput:
    body = await read_body(request, limits, 1, file_fields={"image"}, text_fields={"question"})
    if isinstance(body, Form):
        fields = validate(models.vqa_fields, body.values(set(), {"question"}), strict=False)
        images = body.images("image")
        if not images:
            raise RequestError(422, "image", "missing: send the image as multipart file field 'image'")
        image = decode_image(images[0][1], limits, "image")
    else:
        fields = validate(models.vqa, body)
        image = decode_image(decode_base64(fields.image_base64, limits, "image_base64"), limits, "image_base64")
    return VqaInput(image=image, question=check_text(fields.question, "question", limits))


async def parse_embed(request: Request, limits: LimitsConfig, models: RequestModels) -> EmbedInput:
    body = await read_body(request, limits, limits.max_images, file_fields={"image"}, text_fields={"texts", "model"})
    if isinstance(body, Form):
        fields = validate(models.embed_fields, body.values({"texts"}, {"model"}), strict=False)
        images = [(f"image[{i}]", data) for i, (_, data) in enumerate(body.images("image"))]
    else:
        fields = validate(models.embed, body)
        images = [(f"images_base64[{i}]", decode_base64(text, limits, f"images_base64[{i}]"))
                  for i, text in enumerate(fields.images_base64)]
    if not images and not fields.texts:
        raise RequestError(422, "image/texts", "nothing to embed: give at least one image or one text")
    return EmbedInput(images=[decode_image(data, limits, name) for name, data in images],
                      texts=check_texts(fields.texts, "texts", limits, limits.max_texts) if fields.texts else [],
                      model=fields.model)


async def parse_embeddings(request: Request, limits: LimitsConfig, models: RequestModels) -> EmbeddingsInput:
    """OpenAI's shape: `input` is a string or a list of them; data:image/...;base64 URLs are images."""
    body = await read_body(request, limits, limits.max_images, file_fields=set(), text_fields=set(), form=False)
    parsed = validate(models.embeddings, body)
    given = parsed.input if isinstance(parsed.input, list) else [parsed.input]
    items = []
    for i, item in enumerate(given):
        name = f"input[{i}]" if isinstance(parsed.input, list) else "input"
        if re.match(IMAGE_URL_PATTERN, item):
            items.append(decode_image(decode_base64(item, limits, name), limits, name))
        else:
            items.append(check_text(item, name, limits))
    return EmbeddingsInput(items=items, model=parsed.model, encoding_format=parsed.encoding_format)


async def parse_search(request: Request, limits: LimitsConfig, models: RequestModels) -> SearchInput:
    body = await read_body(request, limits, 1, file_fields={"image"}, text_fields={"text", "top_k"})
    if isinstance(body, Form):
        fields = validate(models.search_fields, body.values(set(), {"text", "top_k"}), strict=False)
        images = body.images("image")
        image_data = images[0][1] if images else None
        image_field = "image"
    else:
        fields = validate(models.search, body)
        image_field = "image_base64"
        image_data = None if fields.image_base64 is None else decode_base64(fields.image_base64, limits, image_field)
    if (image_data is None) == (fields.text is None):
        raise RequestError(422, "text", f"give exactly one query: 'text' or '{image_field}', not "
                                        f"{'both' if fields.text is not None else 'neither'}")
    return SearchInput(image=None if image_data is None else decode_image(image_data, limits, image_field),
                       text=None if fields.text is None else check_text(fields.text, "text", limits),
                       top_k=fields.top_k)


def validate(model: type[BaseModel], values, strict: bool = True) -> BaseModel:
    """Checks values against a request model; JSON bodies strictly (a string is not a number)."""
    try:
        return model.model_validate(values, strict=strict)
    except ValidationError as err:
        first = err.errors()[0]
        raise RequestError(422, field_name(first["loc"]) or "body", first["msg"]) from err


def field_name(loc: tuple) -> str:
    """('labels', 1) -> 'labels[1]'; ('parameters', 'candidate_labels') -> 'parameters.candidate_labels'. Union
    branch tags that pydantic puts in the path (e.g. 'list[...]', 'str') are left out."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif "[" not in part and part not in ("str", "function-after", "constrained-str"):
            name += f".{part}" if name else part
    return name


def max_body_bytes(limits: LimitsConfig, max_images: int) -> int:
    """The largest body a valid request can need: its images as base64 plus every text field at its limit."""
    texts = (limits.max_labels + limits.max_templates + limits.max_texts + 4) * limits.max_text_chars
    return max_images * base64_length(limits.max_image_bytes) + texts * JSON_ESCAPED_CHAR_BYTES + FRAMING_BYTES


async def read_body(request: Request, limits: LimitsConfig, max_images: int, file_fields: set[str],
                    text_fields: set[str], form: bool = True):
    """A Form for multipart/form-data, else the decoded JSON value; 413/415/400/422 for what cannot be read."""
    max_bytes = max_body_bytes(limits, max_images)
    _check_declared_length(request, max_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data" and form:
        return await _read_form(request, limits, max_images, file_fields, text_fields)
    if content_type == "application/json":
        return await _read_json(request, max_bytes)
    accepted = "multipart/form-data or application/json" if form else "application/json"
    raise RequestError(415, "content-type", f"{content_type or 'none'} is not accepted; send {accepted}")


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, "body", f"{declared} bytes is over the limit of {max_bytes} bytes for this request")


async def _read_form(request: Request, limits: LimitsConfig, max_images: int, file_fields: set[str],
                     text_fields: set[str]) -> Form:
    parsed = Form()
    max_fields = limits.max_labels + limits.max_templates + limits.max_texts + 4
    async with request.form(max_files=max_images, max_fields=max_fields) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in file_fields:
                    raise RequestError(422, name, f"unexpected file field (images go in: {', '.join(file_fields)})")
                data = await value.read(limits.max_image_bytes + 1)
                parsed.files.setdefault(name, []).append((name, data))
            elif name in text_fields:
                parsed.texts.setdefault(name, []).append(value)
            else:
                expected = ", ".join(sorted(file_fields | text_fields))
                raise RequestError(422, name, f"unknown field (expected: {expected})")
    return parsed


async def _read_json(request: Request, max_bytes: int):
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestError(413, "body", f"over the limit of {max_bytes} bytes for this request")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, "body", f"not valid UTF-8 (byte {err.start}); JSON bodies must be UTF-8") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(422, "body", f"not valid JSON ({err.msg} at position {err.pos})") from err
    except RecursionError:
        raise RequestError(422, "body", "JSON nested too deeply") from None
