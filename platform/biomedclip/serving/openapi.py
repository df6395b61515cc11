"""The OpenAPI document of one running application: the routes' responses from FastAPI, and request bodies from the
same request models that validate them (built from this server's limits and model ids). Endpoints this server does
not offer (VQA without an artifact, search without an index) are left out, and the API-key schemes are declared only
when the server has a key.
"""
from __future__ import annotations

from copy import deepcopy

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from biomedclip.serving.config import LimitsConfig
from biomedclip.serving.schemas import RequestModels

TITLE = "BiomedCLIP inference"
VERSION = "2.0"  # 2.0: /v1/models lists ids only (listing loads no model)
DESCRIPTION = ("Zero-shot classification, visual question answering, embeddings and figure search for biomedical "
               "images. Send `X-API-Key` (or `Authorization: Bearer`) when the server has a key. Errors are "
               '`{"error": {"status", "field", "message"}}`.')
FILE = {"type": "string", "format": "binary"}
PUBLIC_PATHS = {"/healthz"}
SECURITY_SCHEMES = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                    "Bearer": {"type": "http", "scheme": "bearer"}}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, dict] = {}

    def ref(self, model: type[BaseModel]) -> dict:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}


def _form(fields: type[BaseModel], files: dict[str, dict], **constraints) -> dict:
    """A multipart body: the text fields of a request model (lists as repeated fields) plus file fields."""
    schema = fields.model_json_schema()
    properties = {name: _without_null(prop) for name, prop in schema["properties"].items()}
    for prop in properties.values():
        if prop.get("type") == "array":  # a list travels as repeated fields: an empty one is an absent field
            prop["minItems"] = max(1, prop.get("minItems", 0))
    properties.update(files)
    required = schema.get("required", []) + constraints.pop("required", [])
    form = {"type": "object", "properties": properties, "additionalProperties": False, **constraints}
    if required:
        form["required"] = required
    return form


def _without_null(prop: dict) -> dict:
    """A form field is absent or holds a value: `X | None` becomes X."""
    options = [option for option in prop.get("anyOf", []) if option.get("type") != "null"]
    if len(options) != 1:
        return prop
    merged = {**{k: v for k, v in prop.items() if k != "anyOf"}, **options[0]}
    merged.pop("default", None)
    return merged


def _body(json_schema: dict | None, form: dict | None) -> dict:
    content = {}
    if json_schema is not None:
        content["application/json"] = {"schema": json_schema}
    if form is not None:
        content["multipart/form-data"] = {"schema": form}
    return {"required": True, "content": content}


def request_bodies(models: RequestModels, limits: LimitsConfig, components: _Components) -> dict[str, dict]:
    files = {"type": "array", "items": FILE, "maxItems": limits.max_images}
    return {
        "/v1/zero-shot": _body(
            {"oneOf": [components.ref(models.zero_shot), components.ref(models.hf_zero_shot)]},
            _form(models.zero_shot_fields, {"image": FILE, "images": {**files, "minItems": 1}},
                  oneOf=[{"required": ["image"]}, {"required": ["images"]}])),
        "/v1/vqa": _body(components.ref(models.vqa), _form(models.vqa_fields, {"image": FILE}, required=["image"])),
        "/v1/embed": _body(components.ref(models.embed), _form(
            models.embed_fields, {"image": {**files, "minItems": 1}},
            anyOf=[{"required": ["image"]}, {"required": ["texts"]}])),
        "/v1/embeddings": _body(components.ref(models.embeddings), None),
        "/v1/search": _body(components.ref(models.search), _form(models.search_fields, {"image": FILE}, oneOf=[
            {"required": ["text"]}, {"required": ["image"]}])),
    }


def build_openapi(routes, models: RequestModels, limits: LimitsConfig, offered: set[str], api_key: bool) -> dict:
    """The contract for these routes; `offered` lists the optional paths this server answers."""
    schema = deepcopy(get_openapi(title=TITLE, version=VERSION, description=DESCRIPTION, routes=routes))
    components = _Components()
    for path, body in request_bodies(models, limits, components).items():
        if path not in offered:
            schema["paths"].pop(path, None)
        elif path in schema["paths"]:
            schema["paths"][path]["post"]["requestBody"] = body
    schema.setdefault("components", {}).setdefault("schemas", {}).update(components.schemas)
    if api_key:
        schema["components"]["securitySchemes"] = SECURITY_SCHEMES
        for path, operations in schema["paths"].items():
            if path not in PUBLIC_PATHS:
                for operation in operations.values():
                    operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return schema
