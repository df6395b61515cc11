"""Shared fixtures: one Ray runtime per session, an S3 server on loopback, the real-data folder."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REALDATA = REPO.parent / "shared" / "realdata"

# Ray binds loopback only, without token auth, and keeps its session files inside the repo.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_TMPDIR", str(REPO / ".ray_tmp"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # a loaded 2-core CI box starts nodes slowly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Test credentials for the loopback S3 server, set before any Ray worker starts so that workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
Path(os.environ["RAY_TMPDIR"]).mkdir(exist_ok=True)


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The shared real-data samples; skipped outside CI when absent, an error under CI."""
    if not REALDATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real data folder missing: {REALDATA}")
        pytest.skip(f"real data folder not present: {REALDATA}")
    return REALDATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime for the whole test session (4 logical CPUs on loopback, so 2-core CI can run 2 workers
    + data tasks)."""
    import ray

    for attempt in range(3):  # a loaded machine can miss the node start-up deadline; a second start succeeds
        try:
            ray.init(
                num_cpus=int(os.environ.get("TEST_RAY_CPUS", "4")),
                include_dashboard=False,
                log_to_driver=True,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}},
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    from ray.data import DataContext

    DataContext.get_current().op_resource_reservation_enabled = False
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto, server mode) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
