"""Serving pieces that need no Ray: input validation, auth, the prompt cache, zero-shot ranking and the config."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from biomedclip.config import ConfigError, from_dict
from biomedclip.serving.artifacts import ArtifactUnavailable, fetch_artifact
from biomedclip.serving.auth import AuthError, check_api_key, read_api_key
from biomedclip.serving.config import AuthConfig, LimitsConfig, SearchConfig, ServingConfig
from biomedclip.serving.errors import RequestError
from biomedclip.serving.prompt_cache import PromptCache
from biomedclip.serving.validation import check_templates, check_text, check_texts, decode_base64, decode_image

LIMITS = LimitsConfig(max_image_bytes=50_000, max_image_pixels=1_000_000, max_labels=3, max_text_chars=20)
CAPTIONS = ["chest x-ray with pneumonia", "brain mri showing a tumour", "liver histology slide",
            "abdominal ct scan", "skin lesion photograph"] * 4


def png_bytes(size=(64, 48), color=(200, 40, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height pixels (how decompression bombs start)."""
    data = bytearray(png_bytes((1, 1)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length + type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def refused(fn, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    return info.value


# --- images ---

def test_decode_image_gives_rgb_for_png_jpeg_and_greyscale():
    for data in (png_bytes(), jpeg_bytes(), png_bytes(mode="L", color=128)):
        image = decode_image(data, LIMITS)
        assert image.mode == "RGB" and image.size == (64, 48)


def test_not_an_image_is_refused_with_422():
    err = refused(decode_image, b"%PDF-1.4 this is not an image", LIMITS)
    assert (err.status, err.field) == (422, "image") and "not an image" in err.message


def test_truncated_image_is_refused_with_422():
    data = jpeg_bytes((200, 200))
    err = refused(decode_image, data[: len(data) // 2], LIMITS)
    assert err.status == 422 and "truncated" in err.message


def test_decompression_bombs_refused_from_the_header_alone():
    err = refused(decode_image, png_claiming_size(9_000, 9_000), LIMITS)  # over our limit, under Pillow's
    assert err.status == 422 and "9000x9000" in err.message and "bomb" in err.message
    err = refused(decode_image, png_claiming_size(60_000, 60_000), LIMITS)  # Pillow's own guard fires in open()
    assert err.status == 422 and "bomb" in err.message


def test_pixel_limit_applies_to_real_images_too():
    err = refused(decode_image, png_bytes((200, 200)), LimitsConfig(max_image_pixels=10_000))
    assert err.status == 422 and "200x200" in err.message


def test_image_over_byte_limit_is_413_and_empty_is_422():
    assert refused(decode_image, b"\0" * 50_001, LIMITS).status == 413
    assert refused(decode_image, b"", LIMITS).status == 422


def test_base64_decoding_and_its_errors():
    data = png_bytes()
    assert decode_base64(base64.b64encode(data).decode(), LIMITS, "image_base64") == data
    assert decode_base64("data:image/png;base64," + base64.b64encode(data).decode(), LIMITS, "x") == data
    err = refused(decode_base64, "not base64 !!", LIMITS, "image_base64")
    assert (err.status, err.field) == (422, "image_base64")
    assert refused(decode_base64, "A" * 80_000, LIMITS, "image_base64").status == 413


# --- texts ---

def test_labels_are_stripped_and_bounded():
    assert check_texts([" a ", "b"], "labels", LIMITS, LIMITS.max_labels) == ["a", "b"]
    assert "none given" in refused(check_texts, [], "labels", LIMITS, 3).message
    assert "limit is 3" in refused(check_texts, list("abcd"), "labels", LIMITS, 3).message
    err = refused(check_texts, ["a", "  "], "labels", LIMITS, 3)
    assert err.field == "labels[1]" and "empty" in err.message
    err = refused(check_texts, ["a", "x" * 21], "labels", LIMITS, 3)
    assert err.field == "labels[1]" and "21 characters" in err.message
    assert "more than once" in refused(check_texts, ["a", "a"], "labels", LIMITS, 3, unique=True).message


def test_question_and_templates():
    assert check_text("  Is it? ", "question", LIMITS) == "Is it?"
    assert refused(check_text, "", "question", LIMITS).field == "question"
    assert refused(check_text, 3, "question", LIMITS).status == 422
    assert check_templates(["a {} b"], LIMITS) == ["a {} b"]
    assert "'{}'" in refused(check_templates, ["no slot"], LIMITS).message


# --- auth ---

def test_api_key_from_env_then_file(tmp_path, monkeypatch):
    auth = AuthConfig(key_env="T_KEY", key_file_env="T_KEY_FILE")
    monkeypatch.delenv("T_KEY", raising=False)
    monkeypatch.delenv("T_KEY_FILE", raising=False)
    assert read_api_key(auth) is None
    (tmp_path / "key").write_text("from-file\n")
    monkeypatch.setenv("T_KEY_FILE", str(tmp_path / "key"))
    assert read_api_key(auth) == "from-file"
    monkeypatch.setenv("T_KEY", "from-env")
    assert read_api_key(auth) == "from-env"
    monkeypatch.delenv("T_KEY")
    (tmp_path / "key").write_text("  ")
    with pytest.raises(AuthError, match="empty"):
        read_api_key(auth)
    monkeypatch.setenv("T_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(AuthError, match="missing"):
        read_api_key(auth)


def test_check_api_key_headers():
    check_api_key(None, {})
    check_api_key("k1", {"x-api-key": "k1"})
    check_api_key("k1", {"authorization": "Bearer k1"})
    for headers in ({}, {"x-api-key": "k2"}, {"authorization": "Basic k1"}, {"authorization": "Bearer "}):
        assert refused(check_api_key, "k1", headers).status == 401


# --- prompt cache ---

def test_prompt_cache_counts_and_evicts_least_recently_used():
    cache = PromptCache(capacity=2)
    a, b, c = (("m", (name,), ("{}",)) for name in "abc")
    assert cache.get(a) is None
    cache.put(a, np.zeros(1))
    cache.put(b, np.ones(1))
    assert cache.get(a) is not None  # a is now the most recent
    cache.put(c, np.ones(1))  # evicts b
    assert cache.get(b) is None and cache.get(c) is not None
    assert cache.stats() == {"entries": 2, "hits": 2, "misses": 2}


# --- config ---

def test_serving_config_checks_and_resolves(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="default_model"):
        ServingConfig(models={"a": "x"}, default_model="b")
    with pytest.raises(ConfigError, match="templates"):
        ServingConfig(templates=["no slot"])
    with pytest.raises(ConfigError, match="unknown key"):  # replicas and resources are Serve's deployments: options
        from_dict(ServingConfig, {"clip": {"min_replicas": 1}})
    with pytest.raises(ConfigError, match="search.model"):
        from_dict(ServingConfig, {"models": {"a": "x"}, "search": {"index": "i", "model": "b"}})
    with pytest.raises(ConfigError, match="batching.max_batch_size"):
        from_dict(ServingConfig, {"batching": {"max_batch_size": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(ServingConfig, {"api_key": "secret"})
    monkeypatch.delenv("BIOMEDCLIP_MODEL_DIR", raising=False)
    monkeypatch.delenv("BIOMEDCLIP_VQA_DIR", raising=False)
    config = ServingConfig(models={"a": "demo_out/model", "b": "/abs/b"}).resolved(tmp_path)
    assert config.models == {"a": str(tmp_path / "demo_out/model"), "b": "/abs/b"} and config.vqa_artifact is None
    monkeypatch.setenv("BIOMEDCLIP_MODEL_DIR", "/elsewhere/model")
    monkeypatch.setenv("BIOMEDCLIP_VQA_DIR", "vqa")
    config = ServingConfig(models={"a": "x", "b": "y"}, default_model="b").resolved(tmp_path)
    assert config.models == {"a": str(tmp_path / "x"), "b": "/elsewhere/model"}
    assert config.vqa_artifact == str(tmp_path / "vqa")
    monkeypatch.setenv("BIOMEDCLIP_MODEL_DIR", "s3://models/run-7/final")  # URIs are never taken as relative paths
    monkeypatch.setenv("BIOMEDCLIP_VQA_DIR", "gs://models/vqa")
    config = ServingConfig(models={"a": "s3://models/run-6/final", "b": "y"}, default_model="b",
                           search=SearchConfig(index="file:///srv/index")).resolved(tmp_path)
    assert config.models == {"a": "s3://models/run-6/final", "b": "s3://models/run-7/final"}
    assert config.vqa_artifact == "gs://models/vqa" and config.search.index == "file:///srv/index"


def test_an_artifact_that_cannot_be_fetched_is_named_with_its_location(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("BIOMEDCLIP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ArtifactUnavailable, match=r"model 'x' at s3://no-such-bucket/model: cannot copy"):
        fetch_artifact("model 'x'", "s3://no-such-bucket/model")
    with pytest.raises(ArtifactUnavailable, match=rf"VQA model at {tmp_path}/absent: no such directory"):
        fetch_artifact("VQA model", str(tmp_path / "absent"))


# --- the OpenAPI contract: declared from the same models that validate ---

def test_request_schemas_declare_the_limits_the_server_enforces():
    from pydantic import ValidationError

    from biomedclip.serving.schemas import request_models

    limits = LimitsConfig(max_labels=3, max_text_chars=20, max_images=2, max_texts=4, max_image_bytes=30)
    models = request_models(limits, ["a", "b"], max_top_k=7)
    zero_shot = models.zero_shot.model_json_schema()
    labels = zero_shot["properties"]["labels"]
    assert (labels["minItems"], labels["maxItems"], labels["uniqueItems"]) == (1, 3, True)
    assert (labels["items"]["minLength"], labels["items"]["maxLength"]) == (1, 20)
    assert zero_shot["oneOf"] == [{"required": ["image_base64"]}, {"required": ["images_base64"]}]
    assert zero_shot["properties"]["images_base64"]["maxItems"] == 2
    assert zero_shot["properties"]["model"]["anyOf"][0]["enum"] == ["a", "b"]
    assert models.search.model_json_schema()["properties"]["top_k"]["maximum"] == 7
    ok = {"image_base64": "data:image/png;base64,AAAA", "labels": ["x"]}
    models.zero_shot.model_validate(ok, strict=True)
    for bad in ({**ok, "labels": ["x"] * 4}, {**ok, "labels": ["y" * 21]}, {**ok, "model": "c"},
                {**ok, "image_base64": "@@@@"}, {**ok, "image_base64": None}, {**ok, "extra": 1}):
        with pytest.raises(ValidationError):
            models.zero_shot.model_validate(bad, strict=True)
    with pytest.raises(ValidationError):
        models.search.model_validate({"text": "q", "top_k": "3"}, strict=True)  # JSON: a string is not a number
    assert models.search_fields.model_validate({"text": "q", "top_k": "3"}).top_k == 3  # forms carry strings


def test_openapi_document_offers_what_the_server_serves():
    from biomedclip.serving.ingress import api
    from biomedclip.serving.openapi import build_openapi
    from biomedclip.serving.schemas import request_models

    models = request_models(LIMITS, ["a"], max_top_k=5)
    full = build_openapi(api.routes, models, LIMITS, {"/v1/zero-shot", "/v1/embed", "/v1/embeddings", "/v1/vqa",
                                                      "/v1/search"}, api_key=True)
    assert {"/v1/vqa", "/v1/search", "/v1/embeddings"} <= set(full["paths"])
    assert full["paths"]["/v1/embed"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "security" not in full["paths"]["/healthz"]["get"]
    form = full["paths"]["/v1/zero-shot"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"] == {"type": "string", "format": "binary"} and form["required"] == ["labels"]
    model = form["properties"]["model"]  # a form field is absent or a value, never null
    assert "anyOf" not in model and model.get("const", model.get("enum")) in ("a", ["a"])
    minimal = build_openapi(api.routes, models, LIMITS, {"/v1/zero-shot", "/v1/embed", "/v1/embeddings"},
                            api_key=False)
    assert not {"/v1/vqa", "/v1/search"} & set(minimal["paths"])
    assert "securitySchemes" not in minimal["components"]
