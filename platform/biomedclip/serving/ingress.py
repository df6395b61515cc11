"""The HTTP ingress (FastAPI on Serve): parses and validates requests, checks the API key, calls the model deployments.

Every error leaves as JSON ({"error": {...}}, see errors.py); model replicas only ever see validated inputs.
"""
# No `from __future__ import annotations` here: FastAPI must see the route signatures' real types.
import asyncio
import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from biomedclip.serving.auth import check_api_key, read_api_key
from biomedclip.serving.config import ServingConfig
from biomedclip.serving.errors import RequestError, install_error_handlers
from biomedclip.serving.parsing import parse_embed, parse_vqa, parse_zero_shot
from biomedclip.serving.schemas import (
    EmbedJson,
    EmbedResponse,
    ErrorResponse,
    ModelsResponse,
    VqaJson,
    VqaResponse,
    ZeroShotJson,
    ZeroShotResponse,
)

logger = logging.getLogger("ray.serve")
HEALTH_TIMEOUT_S = 10.0
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)}

api = FastAPI(title="BiomedCLIP inference", version="1.0",
              description="Zero-shot classification, visual question answering and embeddings for biomedical "
                          "images. Send `X-API-Key` (or `Authorization: Bearer`) when the server has a key.")
install_error_handlers(api)


def _request_body(json_model, form_fields: dict, required: list[str]) -> dict:
    """OpenAPI description of a body that comes either as JSON or as a multipart form."""
    form = {"type": "object", "properties": form_fields, "required": required}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": form}}}}


_FILE = {"type": "string", "format": "binary"}
_TEXTS = {"type": "array", "items": {"type": "string"}}
_TEXT = {"type": "string"}


async def _answer(response, timeout_s: float | None = None):
    """Awaits a model deployment; replicas that are gone or overloaded become a 503 the client may retry."""
    try:
        return await (response if timeout_s is None else asyncio.wait_for(response, timeout_s))
    except BackPressureError as err:
        raise RequestError(503, "model", f"the model is overloaded, retry later ({err})") from err
    except TimeoutError:
        raise RequestError(503, "model", f"the model did not answer within {timeout_s} s") from None
    except (RayActorError, RayServeException) as err:
        raise RequestError(503, "model", f"no model replica could answer ({type(err).__name__}); retry later") from err
    except RayTaskError as err:
        logger.error("model deployment failed: %s", err)
        raise RequestError(500, "model", "the model failed on this request; the error was logged") from err


# serve.ingress serialises the app when the class is defined: everything the routes use must exist above this line.
@serve.ingress(api)
class Ingress:
    def __init__(self, clip: DeploymentHandle, vqa: DeploymentHandle | None, config: ServingConfig):
        self.clip = clip
        self.vqa = vqa
        self.config = config
        self.api_key = read_api_key(config.auth)
        if self.api_key is None:
            logger.warning("no API key in $%s or $%s: the API is open", config.auth.key_env,
                           config.auth.key_file_env)
        self.page = resources.files("biomedclip.serving").joinpath("static/index.html").read_text("utf-8")

    @api.get("/", include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/healthz", responses={503: {"model": ErrorResponse}})
    async def healthz(self) -> dict:
        """Ready when the default model answers."""
        response = self._clip(self.config.default_model_id).describe.remote()
        await _answer(response, timeout_s=HEALTH_TIMEOUT_S)
        return {"status": "ok", "default_model": self.config.default_model_id, "vqa_available": self.vqa is not None}

    @api.get("/v1/models", response_model=ModelsResponse, responses=ERRORS)
    async def models(self, request: Request) -> dict:
        check_api_key(self.api_key, request.headers)
        infos = [await _answer(self._clip(model_id).describe.remote()) for model_id in self.config.models]
        return {"default": self.config.default_model_id, "models": infos, "vqa_available": self.vqa is not None}

    @api.post("/v1/zero-shot", response_model=ZeroShotResponse, responses=ERRORS, openapi_extra=_request_body(
        ZeroShotJson, {"image": _FILE, "labels": _TEXTS, "templates": _TEXTS, "model": _TEXT}, ["image", "labels"]))
    async def zero_shot(self, request: Request) -> dict:
        """Candidate labels ranked by probability for one image."""
        check_api_key(self.api_key, request.headers)
        parsed = await parse_zero_shot(request, self.config.limits)
        handle = self._clip(self._model_id(parsed.model))
        return await _answer(handle.zero_shot.remote(parsed.image, parsed.labels, parsed.templates))

    @api.post("/v1/vqa", response_model=VqaResponse, responses=ERRORS, openapi_extra=_request_body(
        VqaJson, {"image": _FILE, "question": _TEXT}, ["image", "question"]))
    async def vqa(self, request: Request) -> dict:
        """An answer to a question about one image, with its confidence and type (closed: yes/no, else open)."""
        check_api_key(self.api_key, request.headers)
        if self.vqa is None:
            raise RequestError(503, "vqa", "no VQA model is configured on this server (set vqa_artifact or "
                                           "$BIOMEDCLIP_VQA_DIR)")
        parsed = await parse_vqa(request, self.config.limits)
        return await _answer(self.vqa.answer.remote(parsed.image, parsed.question))

    @api.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS, openapi_extra=_request_body(
        EmbedJson, {"image": {"type": "array", "items": _FILE}, "texts": _TEXTS, "model": _TEXT}, []))
    async def embed(self, request: Request) -> dict:
        """Unit-length embeddings of images and/or texts in one shared space (for search indexes)."""
        check_api_key(self.api_key, request.headers)
        parsed = await parse_embed(request, self.config.limits)
        handle = self._clip(self._model_id(parsed.model))
        return await _answer(handle.embed.remote(parsed.images, parsed.texts))

    def _model_id(self, requested: str | None) -> str:
        if requested is None:
            return self.config.default_model_id
        if requested not in self.config.models:
            raise RequestError(404, "model", f"unknown model id {requested!r} (available: "
                                             f"{', '.join(self.config.models)})")
        return requested

    def _clip(self, model_id: str) -> DeploymentHandle:
        return self.clip.options(multiplexed_model_id=model_id)
