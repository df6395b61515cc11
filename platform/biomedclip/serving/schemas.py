"""Request and response schemas.

Request bodies are pydantic models built from the configured limits and model ids (`request_models`): the same models
validate JSON bodies (and the text fields of multipart forms) and generate the OpenAPI contract (openapi.py), so every
limit the server enforces is declared and a body the schema accepts is refused only for what no schema can say (an
image whose bytes do not decode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from biomedclip.serving.config import LimitsConfig

_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
IMAGE_PATTERN = rf"^(?:data:[\w.+-]+/[\w.+-]+;base64,)?{_BASE64}$"  # base64, optionally as a data: URL
IMAGE_URL_PATTERN = rf"^data:image/[\w.+-]+;base64,{_BASE64}$"  # an image item of /v1/embeddings' `input`
# Whitespace as JSON Schema's regex dialect (ECMAScript) defines it, spelled out so that every regex engine reads the
# patterns alike; the server strips exactly these (biomedclip.text.whitespace). A text must hold another character.
WHITESPACE_CLASS = r"\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
VISIBLE = rf"[^{WHITESPACE_CLASS}]"
TEXT_PATTERN = VISIBLE
EMBEDDING_TEXT_PATTERN = rf"^(?!data:)[\s\S]*{VISIBLE}"  # a text item of `input`: not a data: URL
TEMPLATE_PATTERN = r"\{\}"
DATA_URL_PREFIX_CHARS = 64  # room for "data:image/png;base64," in front of the base64 payload
# Python's regex engine, so that patterns (\s above, lookaheads) mean the same as the server's own checks.
STRICT = ConfigDict(extra="forbid", regex_engine="python-re")


def _integral_float_to_int(value):
    """JSON Schema's integer includes 5.0; strict validation alone would refuse it (a string stays refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def base64_length(size: int) -> int:
    """Length of the base64 text of `size` bytes."""
    return 4 * -(-size // 3)


@dataclass(frozen=True)
class RequestModels:
    """Per endpoint: the text fields (checked for multipart forms too) and the JSON body (fields + images)."""
    zero_shot_fields: type[BaseModel]
    zero_shot: type[BaseModel]
    hf_zero_shot: type[BaseModel]
    vqa_fields: type[BaseModel]
    vqa: type[BaseModel]
    embed_fields: type[BaseModel]
    embed: type[BaseModel]
    embeddings: type[BaseModel]
    search_fields: type[BaseModel]
    search: type[BaseModel]


def request_models(limits: LimitsConfig, model_ids: list[str], max_top_k: int) -> RequestModels:
    image_chars = base64_length(limits.max_image_bytes) + DATA_URL_PREFIX_CHARS
    Image64 = Annotated[str, StringConstraints(min_length=1, max_length=image_chars, pattern=IMAGE_PATTERN), Field(
        description="an image file (PNG, JPEG, GIF, TIFF, BMP, WebP), base64 encoded; a data: URL works too")]
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars, pattern=TEXT_PATTERN)]
    Template = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars,
                                                pattern=TEMPLATE_PATTERN)]
    ModelId = Literal[tuple(model_ids)]  # type: ignore[valid-type]
    labels_field = Field(min_length=1, max_length=limits.max_labels, json_schema_extra={"uniqueItems": True},
                         description="candidate labels, e.g. ['chest X-ray', 'brain MRI'], each given once")
    model_field = Field(None, description="model id from /v1/models; the default model when left out")

    class ZeroShotFields(BaseModel):
        model_config = STRICT
        labels: list[Text] = labels_field
        templates: list[Template] | None = Field(None, min_length=1, max_length=limits.max_templates,
                                                 json_schema_extra={"uniqueItems": True},
                                                 description="prompt templates with '{}' where the label goes")
        model: ModelId | None = model_field

    class ZeroShotRequest(ZeroShotFields):
        model_config = ConfigDict(**STRICT, json_schema_extra={
            "oneOf": [{"required": ["image_base64"]}, {"required": ["images_base64"]}]})
        # Absent rather than null: exactly one of the two keys is given.
        image_base64: Image64 = Field(None, description="one image: the answer is {model, labels}")
        images_base64: list[Image64] = Field(None, min_length=1, max_length=limits.max_images,
                                                  description="a batch of images: the answer is {model, results}")

    class HfParameters(BaseModel):
        model_config = STRICT
        candidate_labels: list[Text] = labels_field
        hypothesis_template: Template | None = Field(None, description="one prompt template with '{}'")

    class HfZeroShotRequest(BaseModel):
        """Hugging Face's zero-shot-image-classification payload; the answer is [{label, score}], best first."""
        model_config = STRICT
        inputs: Image64
        parameters: HfParameters

    class VqaFields(BaseModel):
        model_config = STRICT
        question: Text

    class VqaRequest(VqaFields):
        image_base64: Image64

    class EmbedFields(BaseModel):
        model_config = STRICT
        texts: list[Text] = Field(default_factory=list, max_length=limits.max_texts)
        model: ModelId | None = model_field

    class EmbedRequest(EmbedFields):
        model_config = ConfigDict(**STRICT, json_schema_extra={"anyOf": [
            {"required": ["images_base64"], "properties": {"images_base64": {"minItems": 1}}},
            {"required": ["texts"], "properties": {"texts": {"minItems": 1}}}]})
        images_base64: list[Image64] = Field(default_factory=list, max_length=limits.max_images)

    ImageUrl = Annotated[str, StringConstraints(min_length=1, max_length=image_chars, pattern=IMAGE_URL_PATTERN)]
    EmbeddingText = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars,
                                                      pattern=EMBEDDING_TEXT_PATTERN)]
    Item = EmbeddingText | ImageUrl

    class EmbeddingsRequest(BaseModel):
        """OpenAI's embeddings request: texts, and images as data:image/...;base64 URLs."""
        model_config = STRICT
        input: Item | Annotated[list[Item], Field(min_length=1, max_length=min(limits.max_texts, limits.max_images))]
        model: ModelId | None = model_field
        encoding_format: Literal["float", "base64"] = Field(
            "float", description="base64: each embedding as little-endian float32 bytes, base64 encoded")
        user: str | None = Field(None, max_length=256, description="accepted and ignored")

    class SearchFields(BaseModel):
        model_config = STRICT
        text: Text = Field(None, description="find figures matching this text")
        top_k: Annotated[int, BeforeValidator(_integral_float_to_int)] = Field(10, ge=1, le=max_top_k)

    class SearchRequest(SearchFields):
        model_config = ConfigDict(**STRICT, json_schema_extra={
            "oneOf": [{"required": ["text"]}, {"required": ["image_base64"]}]})
        image_base64: Image64 = Field(None, description="find figures that look like this image")

    return RequestModels(ZeroShotFields, ZeroShotRequest, HfZeroShotRequest, VqaFields, VqaRequest, EmbedFields,
                         EmbedRequest, EmbeddingsRequest, SearchFields, SearchRequest)


# --- responses ---


class LabelScore(BaseModel):
    label: str
    probability: float


class ZeroShotResponse(BaseModel):
    model: str
    labels: list[LabelScore] = Field(description="all candidate labels, most probable first")


class ImageLabels(BaseModel):
    labels: list[LabelScore]


class ZeroShotBatchResponse(BaseModel):
    model: str
    results: list[ImageLabels] = Field(description="one ranking per image, in request order")


class HfLabelScore(BaseModel):
    label: str
    score: float


class VqaResponse(BaseModel):
    answer: str
    confidence: float
    answer_type: Literal["closed", "open"]


class EmbedResponse(BaseModel):
    model: str
    dim: int
    image_embeddings: list[list[float]] = Field(description="unit-length, in request order")
    text_embeddings: list[list[float]] = Field(description="unit-length, in request order")


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="unit-length; a base64 string when encoding_format=base64")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class SearchHit(BaseModel):
    pmcid: str
    fig_id: str
    caption: str
    score: float = Field(description="cosine similarity to the query")
    thumbnail: str = Field(description="a small JPEG of the figure as a data: URL")


class SearchResponse(BaseModel):
    model: str
    index_size: int
    results: list[SearchHit] = Field(description="best first")


class ModelInfo(BaseModel):
    id: str
    default: bool


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    vqa_available: bool
    search_available: bool


class HealthResponse(BaseModel):
    status: Literal["ok"]
    default_model: str
    vqa_available: bool
    search_available: bool


class ErrorDetail(BaseModel):
    status: int
    field: str | None
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- inputs after parsing and validation ---


@dataclass
class ZeroShotInput:
    images: list[Image.Image]
    labels: list[str]
    templates: list[str] | None
    model: str | None
    shape: Literal["single", "batch", "hf"]  # how the answer is shaped


@dataclass
class VqaInput:
    image: Image.Image
    question: str


@dataclass
class EmbedInput:
    images: list[Image.Image]
    texts: list[str]
    model: str | None


@dataclass
class EmbeddingsInput:
    items: list[Image.Image | str]  # in `input` order
    model: str | None
    encoding_format: str


@dataclass
class SearchInput:
    image: Image.Image | None
    text: str | None
    top_k: int
