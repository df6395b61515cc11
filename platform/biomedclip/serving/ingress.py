"""The HTTP ingress (FastAPI on Serve): parses and validates requests, checks the API key, calls the model deployments.

Every error leaves as JSON ({"error": {...}}, see errors.py); model replicas only ever see validated inputs. The
OpenAPI document at /openapi.json is built per server (openapi.py): its request schemas are the ones that validate.
"""
# No `from __future__ import annotations` here: FastAPI must see the route signatures' real types.
import asyncio
import base64
import logging
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from biomedclip.serving.artifacts import ArtifactUnavailable
from biomedclip.serving.auth import check_api_key, read_api_key
from biomedclip.serving.config import ServingConfig
from biomedclip.serving.errors import RequestError, install_error_handlers
from biomedclip.serving.openapi import DESCRIPTION, TITLE, VERSION, build_openapi
from biomedclip.serving.parsing import parse_embed, parse_embeddings, parse_search, parse_vqa, parse_zero_shot
from biomedclip.serving.schemas import (
    EmbeddingsResponse,
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    HfLabelScore,
    ModelsResponse,
    SearchResponse,
    VqaResponse,
    ZeroShotBatchResponse,
    ZeroShotResponse,
    request_models,
)

logger = logging.getLogger("ray.serve")
HEALTH_TIMEOUT_S = 10.0
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 413, 415, 422, 503)}

api = FastAPI(title=TITLE, version=VERSION, description=DESCRIPTION, openapi_url=None, docs_url=None,
              redoc_url=None)  # served by the Ingress itself: the document depends on this server's config
install_error_handlers(api)


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
        if isinstance(err.cause, ArtifactUnavailable):  # this model only; the others keep serving
            logger.error("%s", err.cause)
            raise RequestError(503, "model", str(err.cause)) from err
        logger.error("model deployment failed: %s", err)
        raise RequestError(500, "model", "the model failed on this request; the error was logged") from err


def _openai_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


# serve.ingress serialises the app when the class is defined: everything the routes use must exist above this line.
@serve.ingress(api)
class Ingress:
    def __init__(self, clip: DeploymentHandle, vqa: DeploymentHandle | None, search: DeploymentHandle | None,
                 config: ServingConfig, key_file: str | None = None):
        self.clip, self.vqa, self.search = clip, vqa, search
        self.config = config
        self.api_key = read_api_key(config.auth, key_file)
        if self.api_key is None:
            logger.warning("no API key in $%s or $%s: the API is open", config.auth.key_env,
                           config.auth.key_file_env)
        self.models = request_models(config.limits, list(config.models), config.search.max_top_k)
        self.page = resources.files("biomedclip.serving").joinpath("static/index.html").read_text("utf-8")
        self.openapi_document: dict | None = None

    @api.get("/", include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        if self.openapi_document is None:
            offered = {"/v1/zero-shot", "/v1/embed", "/v1/embeddings"}
            offered |= {"/v1/vqa"} if self.vqa is not None else set()
            offered |= {"/v1/search"} if self.search is not None else set()
            self.openapi_document = build_openapi(request.app.routes, self.models, self.config.limits, offered,
                                                  self.api_key is not None)
        root = request.scope.get("root_path", "")
        return JSONResponse({**self.openapi_document, "servers": [{"url": root or "/"}]})

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json", title=TITLE)

    @api.get("/healthz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
    async def healthz(self) -> dict:
        """Ready when the default model answers."""
        response = self._clip(self.config.default_model_id).describe.remote()
        await _answer(response, timeout_s=HEALTH_TIMEOUT_S)
        return {"status": "ok", "default_model": self.config.default_model_id, **self._available()}

    @api.get("/v1/models", response_model=ModelsResponse, responses=ERRORS)
    async def models(self, request: Request) -> dict:
        """The model ids this server answers for, from its config: listing loads none of them."""
        check_api_key(self.api_key, request.headers)
        default = self.config.default_model_id
        infos = [{"id": model_id, "default": model_id == default} for model_id in self.config.models]
        return {"default": default, "models": infos, **self._available()}

    @api.post("/v1/zero-shot", responses=ERRORS,
              response_model=ZeroShotResponse | ZeroShotBatchResponse | list[HfLabelScore])
    async def zero_shot(self, request: Request):
        """Candidate labels ranked by probability: for one image ({model, labels}), a batch of images ({model,
        results}), or in Hugging Face's zero-shot-image-classification shape ([{label, score}])."""
        check_api_key(self.api_key, request.headers)
        parsed = await parse_zero_shot(request, self.config.limits, self.models)
        handle = self._clip(parsed.model or self.config.default_model_id)
        answer = await _answer(handle.zero_shot.remote(parsed.images, parsed.labels, parsed.templates))
        rankings = answer["rankings"]
        if parsed.shape == "hf":
            return [{"label": row["label"], "score": row["probability"]} for row in rankings[0]]
        if parsed.shape == "single":
            return {"model": answer["model"], "labels": rankings[0]}
        return {"model": answer["model"], "results": [{"labels": ranking} for ranking in rankings]}

    @api.post("/v1/vqa", response_model=VqaResponse, responses=ERRORS)
    async def vqa(self, request: Request) -> dict:
        """An answer to a question about one image, with its confidence and type (closed: yes/no, else open)."""
        check_api_key(self.api_key, request.headers)
        if self.vqa is None:
            raise RequestError(503, "vqa", "no VQA model is configured on this server (set vqa_artifact or "
                                           "$BIOMEDCLIP_VQA_DIR)")
        parsed = await parse_vqa(request, self.config.limits, self.models)
        return await _answer(self.vqa.answer.remote(parsed.image, parsed.question))

    @api.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS)
    async def embed(self, request: Request) -> dict:
        """Unit-length embeddings of images and/or texts in one shared space (for search indexes)."""
        check_api_key(self.api_key, request.headers)
        parsed = await parse_embed(request, self.config.limits, self.models)
        handle = self._clip(parsed.model or self.config.default_model_id)
        answer = await _answer(handle.embed.remote(parsed.images, parsed.texts))
        return {key: answer[key] for key in ("model", "dim", "image_embeddings", "text_embeddings")}

    @api.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERRORS)
    async def embeddings(self, request: Request) -> dict:
        """OpenAI's embeddings shape: `input` holds texts and data:image/...;base64 URLs, answered in input order."""
        check_api_key(self.api_key, request.headers)
        parsed = await parse_embeddings(request, self.config.limits, self.models)
        images = [item for item in parsed.items if not isinstance(item, str)]
        texts = [item for item in parsed.items if isinstance(item, str)]
        handle = self._clip(parsed.model or self.config.default_model_id)
        answer = await _answer(handle.embed.remote(images, texts))
        image_vectors, text_vectors = iter(answer["image_embeddings"]), iter(answer["text_embeddings"])
        data = [{"object": "embedding", "index": i, "embedding": _openai_embedding(
            next(text_vectors if isinstance(item, str) else image_vectors), parsed.encoding_format)}
            for i, item in enumerate(parsed.items)]
        tokens = answer["text_tokens"]
        return {"object": "list", "data": data, "model": answer["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @api.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search_figures(self, request: Request) -> dict:
        """Figures most similar to a text or an image query (exact cosine over the index), best first."""
        check_api_key(self.api_key, request.headers)
        if self.search is None:
            raise RequestError(503, "search", "no figure index is configured on this server (set search.index; "
                                              "build one with jobs/build_index.py)")
        parsed = await parse_search(request, self.config.limits, self.models)
        model_id = self.config.search_model_id
        query = await _answer(self._clip(model_id).embed.remote([parsed.image] if parsed.image else [],
                                                                [parsed.text] if parsed.text else []))
        vector = (query["image_embeddings"] or query["text_embeddings"])[0]
        found = await _answer(self.search.search.remote(vector, parsed.top_k))
        return {"model": model_id, **found}

    def _available(self) -> dict:
        return {"vqa_available": self.vqa is not None, "search_available": self.search is not None}

    def _clip(self, model_id: str) -> DeploymentHandle:
        return self.clip.options(multiplexed_model_id=model_id)
