"""The inference service as it runs: a real Serve application on loopback, two tiny model artifacts (one random, one
with CCA-fitted heads that retrieves), a figure index built by the Ray Data job, httpx clients, schemathesis fuzzing
from the server's own /openapi.json and headless Chromium. Expected answers come from the same artifacts loaded in
this process."""
from __future__ import annotations

import asyncio
import base64
import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from biomedclip.inference import Predictor, rank_labels
from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model
from biomedclip.model.artifact import artifact_fingerprint, save_artifact
from biomedclip.samples.shapes import write_shapes_corpus
from biomedclip.search import FigureIndex, SearchIndexError
from biomedclip.search.build import build_index
from biomedclip.serving import AuthConfig, BatchingConfig, LimitsConfig, SearchConfig, ServingConfig
from biomedclip.serving.app import build_app
from tests.conftest import free_port
from tests.helpers import train_tokenizer
from tests.serve_helpers import fitted_artifact
from tests.test_serve_units import CAPTIONS, png_claiming_size

pytestmark = pytest.mark.slow  # one Serve application for the module: about a minute to start on 2 busy cores

APP = "biomedclip_test"
NO_VQA_APP = "biomedclip_test_novqa"  # a second, minimal application: no VQA artifact, no index, no API key
API_KEY = "test-key-7f3a"
KEY_FILE_ENV = "SERVE_TEST_API_KEY_FILE"
LIMITS = LimitsConfig(max_image_bytes=300_000, max_labels=5, max_text_chars=60, max_images=3, max_texts=4)
LABELS = ["chest x-ray", "brain mri", "liver histology"]
# The controller drops a proxy that is not ready within 5 s; a busy 2-core machine can take longer than that.
PATIENT_CONTROLLER = {"runtime_env": {"env_vars": {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}}}
SMALL_DEPLOYMENTS = {name: {"ray_actor_options": {"num_cpus": cpus}}
                     for name, cpus in {"Ingress": 0.1, "ClipModel": 0.25, "VqaModel": 0.2, "SearchIndex": 0.1}.items()}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Service:
    url: str
    client: httpx.Client
    engines: dict[str, Predictor]  # the same artifacts, loaded here as the oracle
    config: ServingConfig
    vqa_dir: Path | None  # None while biomedclip.vqa is not importable
    figures: Path  # the held-out figures the search index holds (shapes corpus, val split)
    index: Path


def make_artifact(directory: Path, seed: int) -> Path:
    tokenizer = train_tokenizer(CAPTIONS)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(embed_dim=64, vision=VisionConfig("vit-tiny", 224),
                                    text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size)))
    with torch.no_grad():
        model.logit_scale.fill_(np.log(50.0))  # sharper than the init so that rankings are not all near-uniform
    return save_artifact(model, tokenizer, directory)


def make_vqa_artifact(directory: Path) -> Path | None:
    try:
        from biomedclip.vqa import AnswerVocab, FusionConfig, VQAModel, save_vqa_artifact
    except ImportError:
        return None
    tokenizer = train_tokenizer(CAPTIONS + ["is there a fracture", "which side is abnormal"])
    torch.manual_seed(2)
    encoder = build_model(ModelConfig(embed_dim=64, vision=VisionConfig("vit-tiny", 224),
                                      text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size)))
    vocab = AnswerVocab(["yes", "no", "left lung", "fracture"])
    model = VQAModel(encoder, FusionConfig(width=32, layers=1, heads=2, mlp_ratio=2.0, dropout=0.0), len(vocab))
    return save_vqa_artifact(model.eval(), tokenizer, vocab, directory)


def image_bytes(seed: int, size=(240, 200), fmt="PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def expected_ranking(engine: Predictor, data: bytes, labels: list[str], templates: list[str]) -> list[dict]:
    features = engine.encode_images([Image.open(io.BytesIO(data)).convert("RGB")])
    return rank_labels(engine.zero_shot(features, engine.label_features(labels, templates))[0], labels)


def assert_same_ranking(got: list[dict], expected: list[dict]) -> None:
    assert [row["label"] for row in got] == [row["label"] for row in expected]
    np.testing.assert_allclose([r["probability"] for r in got], [r["probability"] for r in expected], atol=1e-4)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def multipart(data: bytes, **fields) -> dict:
    return {"files": {"image": ("scan.png", data, "image/png")}, "data": fields}


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    shapes = write_shapes_corpus(root / "shapes", train=256, val=48, seed=0)
    # beta retrieves (CCA-fitted heads, see serve_helpers); the search index holds the held-out split it never saw.
    models = {"alpha": make_artifact(root / "alpha", seed=0), "beta": fitted_artifact(shapes / "train", root / "beta")}
    build_index(models["beta"], str(shapes / "val"), str(root / "index"))
    vqa_dir = make_vqa_artifact(root / "vqa")
    (root / "api_key").write_text(API_KEY + "\n")
    os.environ[KEY_FILE_ENV] = str(root / "api_key")  # the builder passes the file's path on to the ingress
    small = {"batching": BatchingConfig(max_batch_size=8, batch_wait_timeout_s=0.1), "limits": LIMITS}
    config = ServingConfig(models={name: str(path) for name, path in models.items()}, default_model="alpha",
                           vqa_artifact=vqa_dir and str(vqa_dir), **small,
                           search=SearchConfig(index=str(root / "index"), model="beta", max_top_k=20),
                           auth=AuthConfig(key_env="SERVE_TEST_API_KEY_UNSET", key_file_env=KEY_FILE_ENV))
    no_vqa = ServingConfig(models={"alpha": str(models["alpha"])}, **small,
                           auth=AuthConfig(key_env="SERVE_TEST_API_KEY_UNSET", key_file_env="SERVE_TEST_NO_KEY"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options=PATIENT_CONTROLLER)
    serve.run_many([serve.RunTarget(build_app(config, deployments=SMALL_DEPLOYMENTS), name=APP, route_prefix="/"),
                    serve.RunTarget(build_app(no_vqa, deployments=SMALL_DEPLOYMENTS), name=NO_VQA_APP,
                                    route_prefix="/novqa")])
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=120)
    engines = {name: Predictor.load(path, model_id=name) for name, path in models.items()}
    try:
        yield Service(url, client, engines, config, vqa_dir, shapes / "val", root / "index")
    finally:
        client.close()
        serve.shutdown()
        os.environ.pop(KEY_FILE_ENV, None)


def assert_serving(service: Service) -> None:
    response = service.client.post("/v1/zero-shot", **multipart(image_bytes(0), labels=LABELS))
    assert response.status_code == 200, response.text


# --- endpoints ---

def test_zero_shot_multipart_matches_the_model(service):
    data = image_bytes(1)
    response = service.client.post("/v1/zero-shot", **multipart(data, labels=LABELS))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "alpha"
    probabilities = [row["probability"] for row in body["labels"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1.0)
    assert_same_ranking(body["labels"], expected_ranking(service.engines["alpha"], data, LABELS,
                                                         service.config.templates))


def test_zero_shot_scores_equal_the_evaluation_jobs(service, tmp_path):
    """Batch evaluation (Ray Data actors) and /v1/zero-shot share one inference path: the same image and labels score
    the same through both."""
    from biomedclip.evaluate import ZeroShotTask, run_zeroshot

    for index, label in enumerate(LABELS):
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / f"{index}.png").write_bytes(image_bytes(40 + index))
    task = ZeroShotTask(templates=service.config.templates, classes={label: label for label in LABELS},
                        name="consistency", format="folder")
    run_zeroshot(service.config.models["alpha"], tmp_path / "data", task, output_dir=tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "zeroshot_consistency_scores.csv").open()))
    assert len(rows) == len(LABELS)
    for row in rows:
        response = service.client.post("/v1/zero-shot", **multipart(Path(row["name"]).read_bytes(), labels=LABELS))
        assert response.status_code == 200, response.text
        served = {r["label"]: r["probability"] for r in response.json()["labels"]}
        np.testing.assert_allclose([served[label] for label in LABELS], [float(row[label]) for label in LABELS],
                                   rtol=0, atol=1e-6)
        assert row["predicted"] == response.json()["labels"][0]["label"]


def test_zero_shot_json_with_templates_equals_multipart(service):
    data = image_bytes(2, fmt="JPEG")
    templates = ["a {} image", "{} from a patient"]
    as_json = service.client.post("/v1/zero-shot", json={
        "image_base64": base64.b64encode(data).decode(), "labels": LABELS, "templates": templates})
    as_form = service.client.post("/v1/zero-shot", **multipart(data, labels=LABELS, templates=templates))
    assert as_json.status_code == as_form.status_code == 200, (as_json.text, as_form.text)
    assert as_json.json() == as_form.json()
    assert_same_ranking(as_json.json()["labels"],
                        expected_ranking(service.engines["alpha"], data, LABELS, templates))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(service):
    from ray import serve

    images = [image_bytes(100 + i) for i in range(12)]

    async def send_all():
        async with httpx.AsyncClient(base_url=service.url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/zero-shot", **multipart(d, labels=LABELS))
                                          for d in images))

    responses = asyncio.run(send_all())
    for data, response in zip(images, responses):
        assert response.status_code == 200, response.text
        assert_same_ranking(response.json()["labels"], expected_ranking(service.engines["alpha"], data, LABELS,
                                                                        service.config.templates))
    stats = serve.get_deployment_handle("ClipModel", APP).stats.remote().result()
    assert max(stats["batch_sizes"]) > 1, stats
    assert stats["prompt_cache"]["hits"] >= 11  # one label set: computed once, then served from the cache


def test_models_are_multiplexed_by_id(service):
    data = image_bytes(3)
    answers = {}
    for name in ("alpha", "beta"):
        response = service.client.post("/v1/zero-shot", **multipart(data, labels=LABELS, model=name))
        assert response.status_code == 200, response.text
        answers[name] = response.json()
        assert answers[name]["model"] == name
        assert_same_ranking(answers[name]["labels"],
                            expected_ranking(service.engines[name], data, LABELS, service.config.templates))
    assert answers["alpha"]["labels"] != answers["beta"]["labels"]
    models = service.client.get("/v1/models").json()
    assert models["default"] == "alpha" and models["vqa_available"] is (service.vqa_dir is not None)
    assert models["models"] == [{"id": "alpha", "default": True}, {"id": "beta", "default": False}]


def test_embed_images_and_texts(service):
    images, texts = [image_bytes(4), image_bytes(5, fmt="JPEG")], ["chest x-ray", "a liver histology slide"]
    files = [("image", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)]
    response = service.client.post("/v1/embed", files=files, data={"texts": texts, "model": "beta"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "beta" and body["dim"] == 64
    engine = service.engines["beta"]
    for data, got in zip(images, body["image_embeddings"]):
        want = engine.encode_images([Image.open(io.BytesIO(data)).convert("RGB")])[0]
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(body["text_embeddings"], engine.encode_texts(texts), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(body["image_embeddings"] + body["text_embeddings"], axis=1), 1.0,
                               atol=1e-5)
    texts_only = service.client.post("/v1/embed", json={"texts": texts}).json()
    assert texts_only["image_embeddings"] == [] and len(texts_only["text_embeddings"]) == 2
    images_only = service.client.post("/v1/embed", json={"images_base64": [base64.b64encode(images[0]).decode()]})
    assert len(images_only.json()["image_embeddings"]) == 1


def test_health_docs_and_page_need_no_key(service):
    with httpx.Client(base_url=service.url, timeout=60) as anonymous:
        assert anonymous.get("/healthz").json()["status"] == "ok"
        assert "swagger" in anonymous.get("/docs").text.lower()
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert {"/v1/zero-shot", "/v1/vqa", "/v1/embed", "/v1/embeddings", "/v1/search", "/v1/models",
                "/healthz"} == set(paths)
        assert "multipart/form-data" in paths["/v1/zero-shot"]["post"]["requestBody"]["content"]
        page = anonymous.get("/")
        assert page.status_code == 200 and 'id="chart"' in page.text


def test_vqa_without_an_artifact_is_503(service):
    response = service.client.post("/novqa/v1/vqa", **multipart(image_bytes(6), question="Is there a fracture?"))
    assert response.status_code == 503
    assert response.json()["error"]["field"] == "vqa" and "no VQA model" in response.json()["error"]["message"]
    assert service.client.get("/novqa/v1/models").json()["vqa_available"] is False


def test_vqa_answers_like_the_predictor(service):
    artifact = pytest.importorskip("biomedclip.vqa.artifact")
    predictor = artifact.load_vqa_predictor(service.vqa_dir)
    images = [image_bytes(300 + i) for i in range(6)]
    questions = ["Is there a fracture?", "Which side is abnormal?", "Is this normal?"] * 2

    async def ask_all():
        async with httpx.AsyncClient(base_url=service.url, headers={"X-API-Key": API_KEY}, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/vqa", **multipart(d, question=q))
                                          for d, q in zip(images, questions)))

    expected = predictor.predict([Image.open(io.BytesIO(d)).convert("RGB") for d in images], questions)
    for response, want in zip(asyncio.run(ask_all()), expected):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["answer"] == want["answer"] and body["answer_type"] == want["answer_type"]
        assert body["answer_type"] == ("closed" if body["answer"] in ("yes", "no") else "open")
        assert body["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
    as_json = service.client.post("/v1/vqa", json={"image_base64": _b64(images[0]), "question": questions[0]})
    assert as_json.json()["answer"] == expected[0]["answer"]
    for question, field in [("", "question"), ("q" * 61, "question")]:
        response = service.client.post("/v1/vqa", **multipart(images[0], question=question))
        assert response.status_code == 422 and response.json()["error"]["field"] == field
    missing = service.client.post("/v1/vqa", **multipart(images[0]))
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "question"


# --- the shapes clients already speak: OpenAI embeddings, Hugging Face zero-shot, batches ---

def test_openai_embeddings_equal_the_native_ones(service):
    images, texts = [image_bytes(20), image_bytes(21, fmt="JPEG")], ["chest x-ray", "a liver histology slide"]
    urls = [f"data:image/{'png' if i == 0 else 'jpeg'};base64,{_b64(data)}" for i, data in enumerate(images)]
    native = service.client.post("/v1/embed", json={"images_base64": [_b64(d) for d in images], "texts": texts,
                                                    "model": "beta"}).json()
    mixed = [texts[0], urls[0], texts[1]]  # answered in input order, whatever the kind
    response = service.client.post("/v1/embeddings", json={"input": mixed, "model": "beta"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "beta" and body["usage"]["prompt_tokens"] > 0
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    want = [native["text_embeddings"][0], native["image_embeddings"][0], native["text_embeddings"][1]]
    np.testing.assert_allclose([item["embedding"] for item in body["data"]], want, atol=1e-6)
    one = service.client.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    alpha = service.client.post("/v1/embed", json={"texts": texts[:1]}).json()["text_embeddings"][0]
    np.testing.assert_allclose(decoded, alpha, atol=1e-6)
    assert one["model"] == "alpha"


def test_hugging_face_zero_shot_equals_the_native_call(service):
    data = image_bytes(22)
    native = service.client.post("/v1/zero-shot", json={"image_base64": _b64(data), "labels": LABELS,
                                                        "templates": ["a {} image"]}).json()
    hf = service.client.post("/v1/zero-shot", json={"inputs": _b64(data), "parameters": {
        "candidate_labels": LABELS, "hypothesis_template": "a {} image"}})
    assert hf.status_code == 200, hf.text
    assert [(row["label"], row["score"]) for row in hf.json()] == [(row["label"], row["probability"])
                                                                   for row in native["labels"]]
    scores = [row["score"] for row in hf.json()]
    assert scores == sorted(scores, reverse=True)


def test_a_batch_of_images_in_one_zero_shot_call(service):
    images = [image_bytes(30 + i) for i in range(LIMITS.max_images)]
    as_json = service.client.post("/v1/zero-shot", json={"images_base64": [_b64(d) for d in images],
                                                         "labels": LABELS})
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    as_form = service.client.post("/v1/zero-shot", files=files, data={"labels": LABELS})
    assert as_json.status_code == as_form.status_code == 200, (as_json.text, as_form.text)
    assert as_json.json() == as_form.json()
    results = as_json.json()["results"]
    assert len(results) == len(images)
    for data, result in zip(images, results):
        assert_same_ranking(result["labels"], expected_ranking(service.engines["alpha"], data, LABELS,
                                                               service.config.templates))
    over = service.client.post("/v1/zero-shot", json={"images_base64": [_b64(images[0])] * 4, "labels": LABELS})
    assert over.status_code == 422 and over.json()["error"]["field"] == "images_base64"


# --- figure search ---

def test_search_finds_each_captions_own_figure(service):
    """Text-to-image over the index of held-out figures: the share of captions whose own figure is in the top 5.
    Chance is 5/48 ~ 0.10; the CCA-fitted model measured 33/48 = 0.69 in this test (0.75 offline, same data)."""
    figures = pq.read_table(service.figures).to_pylist()
    found = 0
    for figure in figures:
        response = service.client.post("/v1/search", json={"text": figure["caption"], "top_k": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "beta" and body["index_size"] == len(figures) and len(body["results"]) == 5
        scores = [hit["score"] for hit in body["results"]]
        assert scores == sorted(scores, reverse=True)
        found += any((hit["pmcid"], hit["fig_id"]) == (figure["pmcid"], figure["fig_id"]) for hit in body["results"])
    share = found / len(figures)
    print(f"\nown figure in the top 5 for {found}/{len(figures)} captions ({share:.2f}; chance {5 / len(figures):.2f})")
    assert share >= 0.5

    figure = figures[7]  # an image query finds the figure itself first, with its caption and thumbnail
    response = service.client.post("/v1/search", files={"image": ("q.jpg", figure["image"], "image/jpeg")},
                                   data={"top_k": "3"})
    assert response.status_code == 200, response.text
    best = response.json()["results"][0]
    assert (best["pmcid"], best["fig_id"], best["caption"]) == (figure["pmcid"], figure["fig_id"], figure["caption"])
    assert best["score"] == pytest.approx(1.0, abs=1e-4)
    thumbnail = Image.open(io.BytesIO(base64.b64decode(best["thumbnail"].split(",", 1)[1])))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 128


def test_index_manifest_and_refusal_of_another_models_index(service):
    beta, alpha = (service.config.models[name] for name in ("beta", "alpha"))
    index = FigureIndex.load(str(service.index), artifact_fingerprint(beta))
    assert len(index) == index.manifest["count"] == pq.read_metadata(next(service.figures.glob("*.parquet"))).num_rows
    assert index.manifest["model"]["fingerprint"] == artifact_fingerprint(beta) != artifact_fingerprint(alpha)
    with pytest.raises(SearchIndexError, match="built with another model"):
        FigureIndex.load(str(service.index), artifact_fingerprint(alpha))
    unavailable = service.client.post("/novqa/v1/search", json={"text": "a red circle"})
    assert unavailable.status_code == 503 and unavailable.json()["error"]["field"] == "search"


# --- auth ---

def test_requests_without_the_key_get_401(service):
    data = image_bytes(7)
    with httpx.Client(base_url=service.url, timeout=60) as anonymous:
        for method, path, kwargs in [("POST", "/v1/zero-shot", multipart(data, labels=LABELS)),
                                     ("POST", "/v1/embed", {"json": {"texts": ["x"]}}),
                                     ("POST", "/v1/vqa", multipart(data, question="q?")),
                                     ("POST", "/v1/embeddings", {"json": {"input": "x"}}),
                                     ("POST", "/v1/search", {"json": {"text": "x"}}),
                                     ("GET", "/v1/models", {})]:
            response = anonymous.request(method, path, **kwargs)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["field"] == "api_key"
        wrong = anonymous.post("/v1/embed", json={"texts": ["x"]}, headers={"X-API-Key": "wrong"})
        assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]["message"]
        bearer = anonymous.post("/v1/embed", json={"texts": ["x"]}, headers={"Authorization": f"Bearer {API_KEY}"})
        assert bearer.status_code == 200


# --- bad input: each a 4xx JSON error naming the field; the service keeps serving ---

GOOD = image_bytes(8, fmt="JPEG")
BAD_REQUESTS = {
    "not an image": ("/v1/zero-shot", multipart(b"GIF89 but not really", labels=LABELS), 422, "image"),
    "truncated image": ("/v1/zero-shot", multipart(GOOD[: len(GOOD) // 2], labels=LABELS), 422, "image"),
    "decompression bomb": ("/v1/zero-shot", multipart(png_claiming_size(9_000, 9_000), labels=LABELS), 422, "image"),
    "image over the byte limit": ("/v1/zero-shot", multipart(b"\xff" * 400_000, labels=LABELS), 413, "image"),
    "body over the byte limit": ("/v1/zero-shot", multipart(b"\xff" * 1_500_000, labels=LABELS), 413, "body"),
    "base64 image over the schema's maxLength": (
        "/v1/zero-shot", {"json": {"image_base64": "A" * 500_000, "labels": LABELS}}, 422, "image_base64"),
    "invalid UTF-8 JSON": ("/v1/zero-shot", {"content": b'{"labels": ["\xff"]}',
                                             "headers": {"content-type": "application/json"}}, 400, "body"),
    "image and images both": ("/v1/zero-shot", {"json": {"image_base64": _b64(GOOD), "images_base64": [_b64(GOOD)],
                                                         "labels": LABELS}}, 422, "image_base64"),
    "HF payload without labels": ("/v1/zero-shot", {"json": {"inputs": _b64(GOOD), "parameters": {}}}, 422,
                                  "parameters.candidate_labels"),
    "text and image search": ("/v1/search", {"json": {"text": "a red circle", "image_base64": _b64(GOOD)}}, 422,
                              "text"),
    "top_k over the limit": ("/v1/search", {"json": {"text": "a red circle", "top_k": 21}}, 422, "top_k"),
    "top_k as a string in JSON": ("/v1/search", {"json": {"text": "a red circle", "top_k": "3"}}, 422, "top_k"),
    "embeddings: a bad image URL": ("/v1/embeddings", {"json": {"input": ["ok", "data:image/png;base64,AAAA"]}}, 422,
                                    "input[1]"),
    "embeddings: empty input": ("/v1/embeddings", {"json": {"input": []}}, 422, "input"),
    "invalid base64": ("/v1/zero-shot", {"json": {"image_base64": "@@@", "labels": LABELS}}, 422, "image_base64"),
    "file in the wrong field": ("/v1/zero-shot", {"data": {"labels": LABELS}, "files": {"other": ("x", b"x")}}, 422,
                               "other"),
    "no image field": ("/v1/zero-shot", {"json": {"labels": LABELS}}, 422, "image_base64"),
    "no labels": ("/v1/zero-shot", multipart(GOOD), 422, "labels"),
    "empty labels list": ("/v1/zero-shot", {"json": {"image_base64": _b64(GOOD), "labels": []}}, 422, "labels"),
    "too many labels": ("/v1/zero-shot", multipart(GOOD, labels=[f"label {i}" for i in range(6)]), 422, "labels"),
    "empty label": ("/v1/zero-shot", multipart(GOOD, labels=["chest x-ray", " "]), 422, "labels[1]"),
    "over-long label": ("/v1/zero-shot", multipart(GOOD, labels=["x" * 61, "y"]), 422, "labels[0]"),
    "duplicate labels": ("/v1/zero-shot", multipart(GOOD, labels=["a", "a"]), 422, "labels"),
    "template without slot": ("/v1/zero-shot", multipart(GOOD, labels=LABELS, templates=["no slot"]), 422,
                              "templates[0]"),
    "unknown form field": ("/v1/zero-shot", multipart(GOOD, label="singular"), 422, "label"),
    "unknown model id": ("/v1/zero-shot", multipart(GOOD, labels=LABELS, model="gamma"), 422, "model"),
    "unknown model id (embed)": ("/v1/embed", {"json": {"texts": ["x"], "model": "gamma"}}, 422, "model"),
    "wrong content type": ("/v1/zero-shot", {"content": b"labels=a", "headers": {"content-type": "text/plain"}},
                           415, "content-type"),
    "no content type": ("/v1/embed", {"content": b"{}"}, 415, "content-type"),
    "invalid JSON": ("/v1/zero-shot", {"content": b"{not json", "headers": {"content-type": "application/json"}},
                     422, "body"),
    "unknown JSON key": ("/v1/embed", {"json": {"texts": ["x"], "image": "y"}}, 422, "image"),
    "labels not a list": ("/v1/zero-shot", {"json": {"image_base64": _b64(GOOD), "labels": 3}}, 422, "labels"),
    "nothing to embed": ("/v1/embed", {"json": {"texts": []}}, 422, "image/texts"),
    "empty text": ("/v1/embed", {"json": {"texts": ["ok", ""]}}, 422, "texts[1]"),
    "over-long text": ("/v1/embed", {"json": {"texts": ["z" * 61]}}, 422, "texts[0]"),
    "too many texts": ("/v1/embed", {"json": {"texts": list("abcde")}}, 422, "texts"),
    "too many images": ("/v1/embed", {"files": [("image", (f"{i}.jpg", GOOD)) for i in range(4)]}, 400, None),
    "bad image among several": ("/v1/embed", {"files": [("image", ("0.jpg", GOOD)), ("image", ("1.jpg", b"no"))]},
                                422, "image[1]"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_json_error(service, case):
    path, kwargs, status, field = BAD_REQUESTS[case]
    response = service.client.post(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["field"] == field and error["message"]
    assert "Traceback" not in response.text
    assert_serving(service)


def test_wrong_method_and_path_are_json_errors(service):
    wrong_method = service.client.get("/v1/zero-shot")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["status"] == 405
    missing = service.client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404


# --- the OpenAPI contract, fuzzed from the running server's /openapi.json ---

FUZZ_EXAMPLES = 6  # per operation and mode (schema-valid, schema-invalid): the whole fuzz test stays near a minute
IMAGE_FIELD = re.compile(r"^(image|images|image_base64|images_base64|inputs|input)(\[\d+\])?$")


def _fuzz(service: Service, prefix: str, api_key: str | None) -> list[str]:
    """Runs schemathesis' checks (no 5xx, status codes, content types, headers and bodies as declared, schema-invalid
    requests refused, 405 with Allow) on generated requests; a schema-valid request may only be refused for its image
    bytes (random bytes are rarely an image), which no schema can describe."""
    import schemathesis
    from schemathesis.generation import GenerationMode

    # A schema-invalid request must get a 4xx error: 413 too, for a string longer than its maxLength.
    config = schemathesis.config.SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": ["400", "401", "405", "413", "415", "422"]}}})
    schema = schemathesis.openapi.from_url(f"{service.url}{prefix}/openapi.json", config=config)
    headers = {"X-API-Key": api_key} if api_key else {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(result.ok(), mode, service.url + prefix, headers, failures)
    return failures


def _fuzz_operation(operation, mode, base_url: str, headers: dict, failures: list[str]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        try:
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
        except (AssertionError, BaseExceptionGroup) as err:  # schemathesis' failures: one line per failing request
            failures.append(f"{operation.label} {mode.value}: {_request(case)}\n{err}\n{response.text[:300]}")
        if mode == GenerationMode.POSITIVE and response.status_code >= 300:
            field = response.json()["error"]["field"]
            if not (response.status_code in (413, 422) and IMAGE_FIELD.match(field or "")):
                failures.append(f"{operation.label}: schema-valid request refused: {_request(case)}\n"
                                f"{response.text[:300]}")

    try:
        check()
    except Unsatisfiable:  # nothing to break in a request without parameters or body (GET /healthz)
        assert mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET", operation.label


def _request(case) -> str:
    return f"{case.media_type} {case.body!r:.300}"


@pytest.mark.parametrize("app", ["with VQA, search and a key", "without VQA, search or a key"])
def test_api_contract_holds_under_fuzzing(service, app):
    with_all = app.startswith("with VQA")
    failures = _fuzz(service, "" if with_all else "/novqa", API_KEY if with_all else None)
    assert not failures, "\n".join(failures[:10])
    assert_serving(service)


# --- the web page, in headless Chromium ---

def test_web_page_answers_and_shows_errors(service, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing in CI (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    data = image_bytes(9)
    (tmp_path / "scan.png").write_bytes(data)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(service.url + "/")
            page.fill("#api-key", API_KEY)
            page.press("#api-key", "Tab")  # change event: the page lists the models
            page.wait_for_selector("#model option[value=beta]", state="attached")
            page.select_option("#model", "beta")
            page.set_input_files("#image", str(tmp_path / "scan.png"))
            page.fill("#labels", "chest x-ray\nbrain mri, liver histology")
            page.click("#submit")
            page.wait_for_selector("#result[data-state=done]", timeout=60_000)
            bars = page.eval_on_selector_all(
                "#chart g.bar", "els => els.map(e => ({label: e.dataset.label, probability: +e.dataset.probability}))")
            page.screenshot(path=str(tmp_path / "zero_shot.png"), full_page=True)
            expected = expected_ranking(service.engines["beta"], data, LABELS, service.config.templates)
            assert [b["label"] for b in bars] == [e["label"] for e in expected]
            np.testing.assert_allclose([b["probability"] for b in bars], [e["probability"] for e in expected],
                                       atol=1e-3)
            assert page.text_content("#answer") == f"Most likely: {expected[0]['label']}"

            page.fill("#labels", " , ")
            page.click("#submit")
            page.wait_for_selector("#result[data-state=error]", timeout=60_000)
            assert page.text_content("#status") == "labels: Field required"  # no label: the form has no field

            if service.vqa_dir is not None:
                from biomedclip.vqa.artifact import load_vqa_predictor

                want = load_vqa_predictor(service.vqa_dir).predict([Image.open(io.BytesIO(data)).convert("RGB")],
                                                                   ["Is there a fracture?"])[0]
                page.check("#mode-vqa")
                page.fill("#question", "Is there a fracture?")
                page.click("#submit")
                page.wait_for_selector("#result[data-state=done]", timeout=60_000)
                assert page.text_content("#answer") == f"Answer: {want['answer']} ({want['answer_type']})"
                bar = page.eval_on_selector("#chart g.bar", "e => +e.dataset.probability")
                assert bar == pytest.approx(want["confidence"], abs=1e-3)
                page.screenshot(path=str(tmp_path / "vqa.png"), full_page=True)

            caption = pq.read_table(service.figures).column("caption")[0].as_py()  # the search tab, by text
            page.check("#mode-search")
            page.fill("#query", caption)
            page.click("#submit")
            page.wait_for_selector("#result[data-state=done]", timeout=60_000)
            page.wait_for_function("() => [...document.querySelectorAll('#hits img')].every(i => i.complete)")
            shown = page.eval_on_selector_all("#hits figure.hit", "els => els.map(e => ({pmcid: e.dataset.pmcid, "
                                              "fig_id: e.dataset.figId, loaded: e.querySelector('img').naturalWidth}))")
            want = service.client.post("/v1/search", json={"text": caption, "top_k": 8}).json()["results"]
            assert [(hit["pmcid"], hit["fig_id"]) for hit in shown] == [(hit["pmcid"], hit["fig_id"]) for hit in want]
            assert all(hit["loaded"] > 0 for hit in shown)  # the thumbnails decoded in the browser
            page.screenshot(path=str(tmp_path / "search.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "zero_shot.png").stat().st_size > 5_000 and (tmp_path / "search.png").stat().st_size > 5_000


# --- a replica that dies is replaced and requests keep being answered (runs last: it disturbs the app) ---

def test_killed_model_replica_is_replaced_and_requests_are_answered(service):
    import ray

    def replica_names() -> set[str]:
        return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                if actor["name"].startswith(f"SERVE_REPLICA::{APP}#ClipModel")}

    before = replica_names()
    assert len(before) == 1, before
    ray.kill(ray.get_actor(next(iter(before)), namespace="serve"), no_restart=True)
    for seed in range(3):
        data = image_bytes(200 + seed)
        response = service.client.post("/v1/zero-shot", **multipart(data, labels=LABELS))
        assert response.status_code == 200, response.text
        assert_same_ranking(response.json()["labels"], expected_ranking(service.engines["alpha"], data, LABELS,
                                                                        service.config.templates))
    after = replica_names()
    assert after and not (after & before), (before, after)
