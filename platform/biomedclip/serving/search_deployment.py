"""The figure-search deployment: holds one index (built by jobs/build_index.py) in memory and answers top-k for a
query embedding. Built only when `search.index` is set. It refuses, at start, an index built by another model than
the one the ingress embeds queries with (`search.model`, whose weights it fingerprints from the node's copy).
Both the index and the model may be URIs."""
from __future__ import annotations

import numpy as np
from ray import serve

from biomedclip.model.artifact import artifact_fingerprint
from biomedclip.search import FigureIndex
from biomedclip.serving.artifacts import fetch_artifact
from biomedclip.serving.config import ROLLOUT_OPTIONS, ServingConfig


class SearchIndex:
    def __init__(self, config: ServingConfig):
        model_id = config.search_model_id
        artifact = fetch_artifact(f"model {model_id!r}", config.models[model_id])
        self.index = FigureIndex.load(config.search.index, artifact_fingerprint(artifact), config.search.chunk_rows)

    def search(self, query: list[float], top_k: int) -> dict:
        return {"index_size": len(self.index), "results": self.index.hits(np.asarray(query, np.float32), top_k)}


DEPLOYMENT_OPTIONS = {
    **ROLLOUT_OPTIONS,
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1,
                           "target_ongoing_requests": 4},
    "max_ongoing_requests": 32,
    "ray_actor_options": {"num_cpus": 0.5},
}
search_deployment = serve.deployment(SearchIndex, name="SearchIndex", **DEPLOYMENT_OPTIONS)
