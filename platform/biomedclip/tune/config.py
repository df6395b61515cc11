"""The sweep job's config: a base pretraining config, a search space over its dotted keys, the ASHA scheduler."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from biomedclip.config import ConfigError, from_dict

# Metrics that every epoch's report carries (the per-epoch validation), so ASHA can compare trials on them.
EPOCH_METRICS = ("val/loss", *(f"val/{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)))


@dataclass(frozen=True)
class AxisSpec:
    """One search dimension: exactly one of a grid (every value), a random choice, or a [low, high] range."""
    grid: list[Any] | None = None
    choice: list[Any] | None = None
    loguniform: list[float] | None = None
    uniform: list[float] | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("grid", "choice", "loguniform", "uniform") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of grid, choice, loguniform, uniform (got {given or 'none'})")
        values = getattr(self, given[0])
        if not values:
            raise ConfigError(f"{given[0]}: needs at least one value")
        if given[0] in ("loguniform", "uniform"):
            positive = given[0] == "uniform" or values[0] > 0
            if len(values) != 2 or not values[0] < values[1] or not positive:
                raise ConfigError(f"{given[0]}: expected [low, high] with low < high (and low > 0 for loguniform), "
                                  f"got {values}")

    @property
    def kind(self) -> str:
        return next(name for name in ("grid", "choice", "loguniform", "uniform") if getattr(self, name) is not None)

    @property
    def values(self) -> list[Any]:
        """The values to check before the sweep starts: all discrete ones, or a range's two ends."""
        return list(getattr(self, self.kind))


@dataclass(frozen=True)
class SchedulerSection:
    metric: str = "val/i2t_R@1"
    mode: Literal["max", "min"] = "max"
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    max_t: int | None = None  # epochs; None: the base config's train.epochs
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.metric not in EPOCH_METRICS:
            raise ConfigError(f"scheduler.metric: {self.metric!r} is not reported every epoch "
                              f"(choose from {', '.join(EPOCH_METRICS)})")
        if self.grace_period < 1 or self.reduction_factor <= 1:
            raise ConfigError("scheduler: grace_period must be >= 1 and reduction_factor > 1")


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"  # the experiment folder under storage_path; rerunning with the same name resumes
    base_config: str = ""  # pretraining YAML (jobs/configs/*.yaml) every trial starts from
    base_overrides: list[str] = field(default_factory=list)  # dotted key=value applied to the base config
    space: dict[str, Any] = field(default_factory=dict)  # dotted pretrain key -> {grid|choice|loguniform|uniform}
    num_samples: int = 1  # draws of the space (a grid is repeated this many times)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    max_concurrent: int = 8  # upper bound; the cluster's resources may allow fewer
    max_gpus: int | None = None  # GPUs the cluster can grow to; None: its autoscaler's limits, else what it has
    data_cpus_per_trial: float = 1.0  # CPUs each trial keeps free for its Ray Data preprocessing tasks
    storage_path: str = "runs/sweeps"  # local folder or s3://bucket/prefix; trials' checkpoints go under it
    s3_endpoint: str | None = None
    results_dir: str | None = None  # table, plot, best config; None: the experiment folder (local storage only)

    def __post_init__(self) -> None:
        if not self.base_config:
            raise ConfigError("base_config: set it to a pretraining config, e.g. jobs/configs/tiny.yaml")
        if not self.space:
            raise ConfigError("space: give at least one search dimension, e.g. {train.optim.lr: {grid: [1e-4, 1e-3]}}")
        if self.num_samples < 1 or self.max_concurrent < 1 or self.data_cpus_per_trial < 0:
            raise ConfigError("num_samples and max_concurrent must be >= 1, data_cpus_per_trial >= 0")
        if self.storage_path.startswith("s3://") and not self.results_dir:
            raise ConfigError("results_dir: set a local folder for the results when storage_path is on S3")
        self.axes()  # fail now on a malformed axis

    def axes(self) -> dict[str, AxisSpec]:
        axes = {}
        for key, spec in self.space.items():
            if key.split(".")[0] not in ("model", "data", "train", "run"):
                raise ConfigError(f"space.{key}: not a pretraining key (it must start with model., data., train. "
                                  f"or run.)")
            try:
                axes[key] = from_dict(AxisSpec, spec, f"space.{key}")
            except ConfigError as err:
                raise ConfigError(err if str(err).startswith("space.") else f"space.{key}: {err}") from err
        return axes
