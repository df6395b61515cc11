"""How a job gets its Ray: the cluster it was submitted to, else a local one sized for the job."""
from __future__ import annotations

import os
from typing import Callable

import ray


def connect_or_start(local_cpus: Callable[[int], int], num_cpus: int | None = None) -> None:
    """Joins RAY_ADDRESS (a cluster, or a job under `ray job submit`), else starts a local Ray with `num_cpus`
    logical CPUs or, by default, `local_cpus(machine_cpus)`: jobs ask for more than a 2-core laptop has, since Ray
    Data waits forever for a CPU that the training workers hold."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    cpus = num_cpus or local_cpus(os.cpu_count() or 1)
    print(f"starting a local Ray with {cpus} logical CPUs", flush=True)
    ray.init(num_cpus=cpus)
