"""Models served from S3 and rolled out while clients keep sending requests: a real Serve application on the session's
Ray, artifacts on the loopback S3 server (moto), expected embeddings from the same artifacts loaded in this process.

One application for the module: version 1 serves `alpha` (the default) and `beta` from S3 plus `broken`, whose URI
holds nothing, and a VQA model from S3; the last tests roll out version 2 (a new checkpoint URI for `alpha`, a new
model id `gamma`, no VQA), then a version 3 whose default model cannot be loaded."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest

from biomedclip.inference import Predictor
from biomedclip.io.transfer import COMPLETE_MARKER, listing, upload_dir
from biomedclip.serving import ServingConfig
from biomedclip.serving.app import build_app
from tests.conftest import free_port
from tests.serve_helpers import requests_during
from tests.test_serve_app import PATIENT_CONTROLLER, image_bytes, make_artifact, make_vqa_artifact

pytestmark = pytest.mark.slow  # a Serve application and a rollout: about a minute on 2 busy cores

APP = "biomedclip_s3_models"
BUCKET = "serve-models"
TEXTS = ["chest x-ray with pneumonia", "liver histology slide"]


@dataclass
class S3App:
    url: str
    client: httpx.Client
    models: dict[str, str]  # name -> s3:// URI of every artifact uploaded
    vqa_dir: Path | None  # the VQA artifact served from S3 (None while biomedclip.vqa is not importable)
    engines: dict[str, Predictor]  # name -> the same artifact loaded here, the oracle
    cache: Path  # the ClipModel replicas' $BIOMEDCLIP_CACHE
    s3_endpoint: str
    deployments: dict[str, dict]

    def embed(self, model: str | None = None) -> np.ndarray:
        response = self.client.post("/v1/embed", json={"texts": TEXTS, **({"model": model} if model else {})})
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["text_embeddings"])

    def expected(self, name: str) -> np.ndarray:
        return self.engines[name].encode_texts(TEXTS)


def clip_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("ClipModel", APP).stats.remote().result()


@pytest.fixture(scope="module")
def s3_app(ray_session, s3_server, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve_s3")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    artifacts = {"alpha_v1": make_artifact(root / "alpha_v1", seed=0), "beta": make_artifact(root / "beta", seed=1),
                 "alpha_v2": make_artifact(root / "alpha_v2", seed=2), "gamma": make_artifact(root / "gamma", seed=3)}
    models = {name: f"s3://{BUCKET}/{name.replace('_', '/')}" for name in artifacts}
    vqa_dir = make_vqa_artifact(root / "vqa")
    if vqa_dir is not None:
        artifacts["vqa"], models["vqa"] = vqa_dir, f"s3://{BUCKET}/vqa"
    for name, directory in artifacts.items():
        upload_dir(directory, models[name], s3_server)
    cache = root / "cache"
    one_replica = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}}
    reads_s3 = {"runtime_env": {"env_vars": {"BIOMEDCLIP_CACHE": str(cache), "AWS_ENDPOINT_URL": s3_server}}}
    deployments = {"Ingress": {**one_replica, "ray_actor_options": {"num_cpus": 0.1}},
                   "ClipModel": {**one_replica, "ray_actor_options": {"num_cpus": 0.25, **reads_s3}},
                   "VqaModel": {**one_replica, "ray_actor_options": {"num_cpus": 0.1, **reads_s3}}}
    config = ServingConfig(models={"alpha": models["alpha_v1"], "beta": models["beta"],
                                   "broken": f"s3://{BUCKET}/nothing/here"},
                           vqa_artifact=models.get("vqa")).resolved(root)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options=PATIENT_CONTROLLER)
    serve.run(build_app(config, deployments=deployments), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=120)
    engines = {name: Predictor.load(directory, model_id=name) for name, directory in artifacts.items()
               if name != "vqa"}
    try:
        yield S3App(url, client, models, vqa_dir, engines, cache, s3_server, deployments)
    finally:
        client.close()
        serve.shutdown()


def test_listing_loads_no_model_and_s3_models_answer_from_a_verified_copy(s3_app):
    assert clip_stats()["loads"] == {"alpha": 1}  # the default, loaded when the replica started
    listed = s3_app.client.get("/v1/models")
    assert listed.status_code == 200, listed.text
    assert listed.json()["models"] == [{"id": "alpha", "default": True}, {"id": "beta", "default": False},
                                       {"id": "broken", "default": False}]
    assert clip_stats()["loads"] == {"alpha": 1}

    np.testing.assert_allclose(s3_app.embed(), s3_app.expected("alpha_v1"), atol=1e-5)
    np.testing.assert_allclose(s3_app.embed("beta"), s3_app.expected("beta"), atol=1e-5)
    assert clip_stats()["loads"] == {"alpha": 1, "beta": 1}
    copied = ["alpha_v1", "beta"] + (["vqa"] if s3_app.vqa_dir else [])
    copies = [marker.parent for marker in s3_app.cache.glob(f"*/{COMPLETE_MARKER}")]
    assert len(copies) == len(copied), sorted(s3_app.cache.iterdir())  # each verified against the store's listing
    in_cache = sorted(sorted((str(path.relative_to(copy)), path.stat().st_size) for path in copy.rglob("*")
                             if path.is_file() and path.name != COMPLETE_MARKER) for copy in copies)
    assert in_cache == sorted(sorted(listing(s3_app.models[name], s3_app.s3_endpoint).items()) for name in copied)


def test_the_vqa_model_from_s3_answers_like_the_predictor(s3_app):
    if s3_app.vqa_dir is None:
        pytest.skip("biomedclip.vqa is not importable")
    from PIL import Image

    from biomedclip.vqa.artifact import load_vqa_predictor

    data, question = image_bytes(7), "Is there a fracture?"
    response = s3_app.client.post("/v1/vqa", files={"image": ("scan.png", data, "image/png")},
                                  data={"question": question})
    assert response.status_code == 200, response.text
    want = load_vqa_predictor(s3_app.vqa_dir).predict([Image.open(io.BytesIO(data)).convert("RGB")], [question])[0]
    assert response.json()["answer"] == want["answer"]
    assert response.json()["confidence"] == pytest.approx(want["confidence"], abs=1e-5)


def test_a_model_that_cannot_be_fetched_fails_only_its_own_requests(s3_app):
    response = s3_app.client.post("/v1/embed", json={"texts": TEXTS, "model": "broken"})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["field"] == "model"
    assert "'broken'" in error["message"] and f"s3://{BUCKET}/nothing/here" in error["message"]
    np.testing.assert_allclose(s3_app.embed("beta"), s3_app.expected("beta"), atol=1e-5)
    assert s3_app.client.get("/healthz").json()["status"] == "ok"


def test_rollout_of_a_new_checkpoint_and_a_new_model_id_fails_no_request(s3_app):
    """`serve deploy` of version 2 (alpha from a new URI, gamma added) while two clients keep asking the default
    model: every request is answered, each by version 1 or version 2, and version 2 answers once the rollout is
    done."""
    from ray import serve

    version_2 = ServingConfig(models={"alpha": s3_app.models["alpha_v2"], "beta": s3_app.models["beta"],
                                      "gamma": s3_app.models["gamma"]})  # and no VQA: one replica less to start
    rebuilt = build_app(version_2, deployments=s3_app.deployments)
    record = requests_during(lambda: serve.run(rebuilt, name=APP, route_prefix="/"),
                             lambda client: client.post("/v1/embed", json={"texts": TEXTS}), s3_app.url)
    old, new = s3_app.expected("alpha_v1"), s3_app.expected("alpha_v2")
    print(f"\nrollout: {record.rollout_seconds:.1f} s; {len(record.answers)} requests, {len(record.during)} sent "
          f"during it, {len(record.failures)} failed; slowest answer {max(a.seconds for a in record.answers):.1f} s")
    assert not record.failures, record.failures[:3]
    assert record.during, "no request was sent while the rollout ran"

    def version(answer) -> int:
        got = np.asarray(answer.body["text_embeddings"])
        matches = [v for v, want in ((1, old), (2, new)) if np.allclose(got, want, atol=1e-5)]
        assert len(matches) == 1, f"an answer from neither version: {answer}"
        return matches[0]

    versions = [version(answer) for answer in record.answers]
    during = [v for v, answer in zip(versions, record.answers) if 0 <= answer.sent_at < record.rollout_seconds]
    print(f"answered during the rollout by version 1: {during.count(1)}, by version 2: {during.count(2)}")
    assert versions[0] == 1
    assert all(v == 2 for v, answer in zip(versions, record.answers) if answer.sent_at >= record.rollout_seconds)
    listed = [model["id"] for model in s3_app.client.get("/v1/models").json()["models"]]
    assert listed == ["alpha", "beta", "gamma"]
    np.testing.assert_allclose(s3_app.embed("gamma"), s3_app.expected("gamma"), atol=1e-5)


def test_a_rollout_whose_default_model_cannot_be_loaded_keeps_the_old_replicas_serving(s3_app):
    """Version 3 names a default model whose URI holds nothing: its model replicas fail to start, Serve gives the
    rollout up and the version-2 replicas keep answering; no request fails meanwhile."""
    from ray import serve

    broken = ServingConfig(models={"alpha": f"s3://{BUCKET}/nothing/here", "beta": s3_app.models["beta"]})
    deployments = {**s3_app.deployments, "ClipModel": {**s3_app.deployments["ClipModel"],
                                                       "max_constructor_retry_count": 1}}
    refused: list[RuntimeError] = []

    def redeploy() -> None:
        try:
            serve.run(build_app(broken, deployments=deployments), name=APP, route_prefix="/")
        except RuntimeError as err:  # "Deploying application ... failed"
            refused.append(err)

    record = requests_during(redeploy, lambda client: client.post("/v1/embed", json={"texts": TEXTS}), s3_app.url)
    print(f"\nfailed rollout: {record.rollout_seconds:.1f} s; {len(record.answers)} requests, "
          f"{len(record.failures)} failed")
    assert refused, "the broken rollout was not refused"
    status = serve.status().applications[APP].deployments["ClipModel"]  # what `serve status` shows
    assert "'alpha'" in status.message and f"s3://{BUCKET}/nothing/here" in status.message, status.message
    assert not record.failures, record.failures[:3]
    for answer in record.answers:
        np.testing.assert_allclose(answer.body["text_embeddings"], s3_app.expected("alpha_v2"), atol=1e-5)
