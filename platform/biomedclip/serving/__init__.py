"""Online inference on Ray Serve: zero-shot, VQA, embedding and figure-search endpoints behind an authenticated
FastAPI ingress.

Start in-process: `serve.run(build_app(ServingConfig(models={"default": "/abs/model"}).resolved(".")))` with
`build_app` from `biomedclip.serving.app`; from the command line: `serve run serve/config.yaml`.
This package imports only the configs, so that the ingress replicas never load torch.
"""
from biomedclip.serving.config import AuthConfig, BatchingConfig, LimitsConfig, SearchConfig, ServingConfig

__all__ = ["AuthConfig", "BatchingConfig", "LimitsConfig", "SearchConfig", "ServingConfig"]
