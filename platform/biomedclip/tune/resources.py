"""How many trials run at once: each trial is a whole distributed run (its workers, plus CPUs for its data tasks),
so concurrency is bounded by the cluster's CPUs and GPUs, and a trial that cannot fit is refused before any starts.

"The cluster" is what it can grow to: an autoscaling cluster (`ray up`, KubeRay) that scales from zero has no GPUs
when the sweep starts; trials beyond what is running wait in Tune's queue until the autoscaler brings nodes."""
from __future__ import annotations

import math
import sys
from typing import Any

from biomedclip.config import ConfigError
from biomedclip.train.config import PretrainConfig
from biomedclip.tune.config import SweepConfig
from biomedclip.tune.space import pretrain_config

DRIVER_CPUS = 0.01  # the per-trial driver function only waits on its TorchTrainer; a whole CPU each would deadlock


def trial_footprint(cfg: PretrainConfig, data_cpus: float) -> dict[str, float]:
    """Resources one trial holds while it trains (an elastic run can start at its minimum worker count), its
    driver's sliver of a CPU included."""
    workers = cfg.run.worker_range[0]
    return {"CPU": workers * cfg.run.cpus_per_worker + data_cpus + DRIVER_CPUS,
            "GPU": float(workers) if cfg.run.use_gpu else 0.0}


def _describe(cfg: PretrainConfig, data_cpus: float) -> str:
    gpus = f", {cfg.run.worker_range[0]} GPUs (run.use_gpu)" if cfg.run.use_gpu else ""
    return (f"run.num_workers={cfg.run.worker_range[0]} x run.cpus_per_worker={cfg.run.cpus_per_worker} "
            f"+ data_cpus_per_trial={data_cpus} CPUs{gpus}")


def cluster_capacity(current: dict[str, float], autoscaler_max: dict[str, float] | None,
                     max_gpus: int | None = None) -> dict[str, float]:
    """Per resource, the larger of what the cluster has now and what its autoscaler may add (its node types' max
    counts; None on a fixed or local cluster). An explicit `max_gpus` (the sweep's) is the operator's word for a
    cluster that does not tell Ray its limits: it sets the GPUs, and CPUs then bound nothing."""
    capacity = dict(current)
    for kind, most in (autoscaler_max or {}).items():
        capacity[kind] = max(capacity.get(kind, 0.0), float(most))
    if max_gpus is not None:
        capacity["GPU"] = float(max_gpus)
        if autoscaler_max is None:
            capacity["CPU"] = math.inf
    return capacity


def trials_that_fit(footprint: dict[str, float], cluster: dict[str, float]) -> int:
    bounded = [cluster.get(kind, 0.0) // need for kind, need in footprint.items()
               if need > 0 and cluster.get(kind, 0.0) != math.inf]
    return int(min(bounded, default=sys.maxsize))


def _trial_configs(sweep: SweepConfig, base: dict[str, Any]) -> list[tuple[str, PretrainConfig]]:
    """The base config and each single axis value applied to it, labelled for error messages."""
    configs = [("base config", pretrain_config(base, {}))]
    for key, axis in sweep.axes().items():
        configs += [(f"space.{key}={value!r}", pretrain_config(base, {key: value})) for value in axis.values]
    return configs


def plan_concurrency(sweep: SweepConfig, base: dict[str, Any], cluster: dict[str, float]) -> int:
    """min(max_concurrent, trials the cluster holds at once) for the largest trial any axis value makes;
    a ConfigError naming the key and value when even one trial cannot fit."""
    fits = []
    for label, cfg in _trial_configs(sweep, base):
        count = trials_that_fit(trial_footprint(cfg, sweep.data_cpus_per_trial), cluster)
        if count == 0:
            have = ", ".join(f"{cluster.get(kind, 0):g} {kind}s" for kind in ("CPU", "GPU"))
            raise ConfigError(f"{label}: one trial needs {_describe(cfg, sweep.data_cpus_per_trial)} "
                              f"but the cluster has {have}, and no autoscaler adds more (set max_gpus when it "
                              "scales from zero without telling Ray its limits)")
        fits.append(count)
    return min(sweep.max_concurrent, *fits)


def local_cpus(sweep: SweepConfig, base: dict[str, Any], machine_cpus: int) -> int:
    """Logical CPUs for a local Ray: the machine's, or at least enough for `max_concurrent` of the largest trials
    (workers, data tasks, driver). Small trials mostly wait on process start-up and data-pipeline latency, so a
    2-core laptop runs two tiny trials at once faster than one after the other."""
    largest = max(trial_footprint(cfg, sweep.data_cpus_per_trial)["CPU"] for _, cfg in _trial_configs(sweep, base))
    return max(machine_cpus, math.ceil(sweep.max_concurrent * largest))
