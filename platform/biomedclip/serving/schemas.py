"""Request and response schemas: the JSON bodies (also shown in the OpenAPI docs) and the parsed inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

# --- JSON request bodies (multipart forms carry the same fields, with `image` as file parts) ---


class ZeroShotJson(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_base64: str = Field(description="the image file, base64 encoded (a data: URL works too)")
    labels: list[str] = Field(description="candidate labels, e.g. ['chest X-ray', 'brain MRI']")
    templates: list[str] | None = Field(None, description="prompt templates with '{}' for the label")
    model: str | None = Field(None, description="model id from /v1/models; the default model when left out")


class VqaJson(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_base64: str
    question: str


class EmbedJson(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images_base64: list[str] = Field(default_factory=list)
    texts: list[str] = Field(default_factory=list)
    model: str | None = None


# --- responses ---


class LabelScore(BaseModel):
    label: str
    probability: float


class ZeroShotResponse(BaseModel):
    model: str
    labels: list[LabelScore] = Field(description="all candidate labels, most probable first")


class VqaResponse(BaseModel):
    answer: str
    confidence: float
    answer_type: Literal["closed", "open"]


class EmbedResponse(BaseModel):
    model: str
    dim: int
    image_embeddings: list[list[float]] = Field(description="unit-length, in request order")
    text_embeddings: list[list[float]] = Field(description="unit-length, in request order")


class ModelInfo(BaseModel):
    id: str
    default: bool
    embed_dim: int
    vision: str
    image_size: int
    text: str
    context_length: int
    device: str


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    vqa_available: bool


class ErrorDetail(BaseModel):
    status: int
    field: str | None
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- inputs after parsing and validation ---


@dataclass
class ZeroShotInput:
    image: Image.Image
    labels: list[str]
    templates: list[str] | None
    model: str | None


@dataclass
class VqaInput:
    image: Image.Image
    question: str


@dataclass
class EmbedInput:
    images: list[Image.Image]
    texts: list[str]
    model: str | None
