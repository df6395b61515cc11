"""PMC figure-caption extraction on Ray Data.

    list articles (driver, streamed in waves of units)
      -> stage units   [Ray Data map, one task per unit of N articles: read package, parse JATS, match media
                        (I/O threads) -> decode, RGB, resize, JPEG (CPU) -> filters -> split -> staged Parquet]
      -> dedup         [two map-only passes over hash buckets: exact-duplicate images keep the smallest (pmcid, fig_id)]
      -> finalize      [Ray Data map per unit: drop duplicates -> <output>/<split>/part-<unit>.parquet]
      -> manifest.json, articles.jsonl, stats/*.png

Resumable: finished units are found by their markers under <output>/_state and not redone; the dedup and final
passes are deterministic functions of the staged shards, so a run killed anywhere and run again gives exactly the
pairs of an uninterrupted run. Rerunning on an output written with different extraction settings is refused.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import ray

from biomedclip.io import OutputStore
from biomedclip.pmc.dedup import bucket_losers, write_group_buckets
from biomedclip.pmc.filters import FilterConfig
from biomedclip.pmc.images import ImageConfig
from biomedclip.pmc.manifest import ManifestBuilder
from biomedclip.pmc.pairs import PANEL_MODES, PairConfig
from biomedclip.pmc.panels import PanelConfig
from biomedclip.pmc.sources import Source, SourceConfig
from biomedclip.pmc.split import SPLITS, SplitConfig
from biomedclip.pmc.stats import plot_histograms
from biomedclip.pmc.units import (
    FINAL_DIR,
    STAGED_DIR,
    Unit,
    batched,
    final_marker,
    finalize_unit,
    plan_units,
    prefetched,
    stage_unit,
    staged_marker,
)
from biomedclip.progress import bar

log = logging.getLogger("biomedclip.data.extract")
CONFIG_RECORD = "_state/config.json"
DEDUP_DIR = "_state/dedup"
# Settings that change what a unit produces; a rerun on the same output must match them.
OUTPUT_DEFINING = ("source", "images", "filters", "split", "panels", "panel_detection", "articles_per_unit")


class ExtractError(RuntimeError):
    """The run cannot start: a setting or the output location is wrong."""


class ExtractFailed(RuntimeError):
    """The run ended but did not do its work (e.g. the articles could not be read); the manifest says what happened."""


@dataclass(frozen=True)
class ExtractConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    output: str = ""
    output_s3_endpoint: str | None = None
    limit: int | None = None  # first N articles of the listing
    images: ImageConfig = field(default_factory=ImageConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    # Compound figures: off (whole figures only, as before) | add (panel pairs beside the whole figure) | replace.
    # YAML reads a bare `off` as false, which means off too.
    panels: Literal["off", "add", "replace"] | bool = "add"
    panel_detection: PanelConfig = field(default_factory=PanelConfig)
    articles_per_unit: int = 32
    units_per_wave: int = 2048  # units listed and scheduled at a time (bounds the driver's memory)
    io_threads: int = 4  # per task, articles fetched ahead while the CPU decodes
    cpus_per_task: float = 1.0
    dedup_units_per_group: int = 512
    dedup_pairs_per_bucket: int = 1_000_000
    fail_unreadable_share: float = 1.0  # the run fails when at least this share of articles is unreadable (1: all)

    def __post_init__(self):
        if self.articles_per_unit < 1 or self.units_per_wave < 1 or self.io_threads < 1:
            raise ValueError("articles_per_unit, units_per_wave and io_threads must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if not 0 < self.fail_unreadable_share <= 1:
            raise ValueError(f"fail_unreadable_share: {self.fail_unreadable_share} is not in (0, 1]")
        if self.panels is True:
            raise ValueError(f"panels must be one of {PANEL_MODES}, not true")
        if self.panels is False:
            object.__setattr__(self, "panels", "off")

    @property
    def pairs(self) -> PairConfig:
        return PairConfig(self.images, self.filters, self.split, self.panels, self.panel_detection)


def run_extraction(config: ExtractConfig) -> dict:
    """Runs (or resumes) the extraction into `config.output`; returns the manifest it writes."""
    if not config.source.uri:
        raise ExtractError("no source given")
    out = OutputStore(config.output, config.output_s3_endpoint)
    _check_settings(out, config)
    out.clear_temporaries()
    source = Source(config.source)
    log.info("source %s (layout %s) -> %s", config.source.uri, source.layout, out.url())
    clock = _Clock()
    units = clock.time("stage", _stage, source, out, config)
    losers = clock.time("dedup", _find_duplicates, units, out, config)
    finals = clock.time("finalize", _finalize, units, losers, out, config)
    manifest = _write_manifest(units, finals, out, config, source.layout, clock)
    _check_readable(manifest, config)
    return manifest


def _check_readable(manifest: dict, config: ExtractConfig) -> None:
    seen, unreadable = manifest["articles_seen"], manifest["articles_unreadable"]
    if seen == 0:
        raise ExtractFailed(f"no articles found in {config.source.uri} (layout {manifest['layout']})")
    if manifest["unreadable_share"] >= config.fail_unreadable_share:
        raise ExtractFailed(
            f"{unreadable} of {seen} articles ({manifest['unreadable_share']:.0%}) could not be read from "
            f"{config.source.uri}: check the S3 endpoint (AWS_ENDPOINT_URL), credentials or --signed; the log names "
            f"each file and {manifest['articles_report']} lists every article")


class _Clock:
    """Wall seconds per phase of this run, reported in the manifest."""

    def __init__(self):
        self.start, self.seconds = time.perf_counter(), {}

    def time(self, phase: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.seconds[phase] = round(time.perf_counter() - start, 3)
        return result

    def report(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.start, 3)}


def _check_settings(out: OutputStore, config: ExtractConfig) -> None:
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k in OUTPUT_DEFINING}
    for machine_setting in ("s3_endpoint", "anonymous"):
        settings["source"].pop(machine_setting)
    if out.exists(CONFIG_RECORD):
        previous = out.read_json(CONFIG_RECORD)
        if previous != _jsonable(settings):
            key = next(k for k in settings if previous.get(k) != _jsonable(settings[k]))
            raise ExtractError(f"{out.url()} was extracted with different settings ({key}: {previous.get(key)!r}); "
                               "use a new output location")
    else:
        out.write_json(CONFIG_RECORD, settings)


def _jsonable(value):
    return json.loads(json.dumps(value))


def _stage(source: Source, out: OutputStore, config: ExtractConfig) -> list[str]:
    """Stages every unit not staged before; returns the names of all units of this listing, in order."""
    done = {name.removesuffix(".json") for name in out.list_names(STAGED_DIR) if name.endswith(".json")}
    names: list[str] = []
    pairs = 0
    with bar(desc="extraction", unit="unit") as shown:  # the total grows as the listing is read, wave by wave
        for wave in batched(plan_units(source.list_refs(config.limit), config.articles_per_unit),
                            config.units_per_wave):
            names.extend(unit.name for unit in wave)
            pending = [unit for unit in wave if unit.name not in done]
            log.info("units %d-%d: %d staged before, %d to stage", wave[0].index, wave[-1].index,
                     len(wave) - len(pending), len(pending))
            shown.total = len(names)
            shown.update(len(wave) - len(pending))
            if pending:
                items = [{"index": unit.index, "refs": list(unit.refs)} for unit in pending]
                stage = partial(_stage_row, source=source, config=config.pairs, out=out, io_threads=config.io_threads)
                ds = ray.data.from_items(items, override_num_blocks=len(items)).map(stage,
                                                                                    num_cpus=config.cpus_per_task)
                for n, row in enumerate(_unreserved(ds).iter_rows(), 1):
                    log.info("staged %s: %d articles, %d pairs (%d/%d)", row["unit"], row["articles"], row["pairs"],
                             n, len(pending))
                    pairs += row["pairs"]
                    shown.set_postfix_str(f"{pairs} pairs", refresh=False)
                    shown.update()
    return names


def _light_blocks(items: int) -> int:
    """Blocks for a pass of light per-item work: a couple per CPU, as each Ray task has a fixed cost."""
    return max(1, min(items, 2 * int(ray.cluster_resources().get("CPU", 1))))


def _unreserved(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Each dataset here is one map operator: Ray Data's per-operator reservation (which keeps a share of the
    cluster for downstream operators) would only cap it, at one task at a time on a 2-CPU machine."""
    ds.context.op_resource_reservation_enabled = False
    return ds


def _stage_row(row: dict, source: Source, config: PairConfig, out: OutputStore, io_threads: int) -> dict:
    unit = Unit(int(row["index"]), tuple(str(ref) for ref in row["refs"]))
    marker = stage_unit(unit, source, config, out, io_threads)
    return {"unit": marker["unit"], "articles": marker["articles"], "pairs": marker["pairs"]}


def _find_duplicates(units: list[str], out: OutputStore, config: ExtractConfig) -> dict[str, list[str]]:
    """Pair keys to drop, by unit name."""
    total = sum(m["pairs"] for m in _markers(out, [staged_marker(name) for name in units]))
    if not total:
        return {}
    buckets = max(1, math.ceil(total / config.dedup_pairs_per_bucket))
    groups = list(batched(units, config.dedup_units_per_group))
    directory = DEDUP_DIR
    out.delete_dir(directory)  # recomputed from the staged shards on every run
    write = partial(_group_row, buckets=buckets, directory=directory, out=out)
    items = [{"group": g, "units": names} for g, names in enumerate(groups)]
    groups_ds = ray.data.from_items(items, override_num_blocks=len(items))
    _unreserved(groups_ds.map(write, num_cpus=config.cpus_per_task)).materialize()
    find = partial(_bucket_rows, groups=len(groups), directory=directory, out=out)
    losers: dict[str, list[str]] = defaultdict(list)
    rows = ray.data.range(buckets, override_num_blocks=buckets).flat_map(find, num_cpus=config.cpus_per_task)
    for row in _unreserved(rows).iter_rows():
        losers[row["unit"]].append(row["pair_key"])
    log.info("dedup: %d pairs in %d buckets, %d duplicate images dropped", total, buckets,
             sum(map(len, losers.values())))
    return losers


def _group_row(row: dict, buckets: int, directory: str, out: OutputStore) -> dict:
    keys = write_group_buckets(int(row["group"]), [str(n) for n in row["units"]], buckets, directory, out)
    return {"group": row["group"], "keys": keys}


def _bucket_rows(row: dict, groups: int, directory: str, out: OutputStore) -> list[dict]:
    return bucket_losers(int(row["id"]), groups, directory, out)


def _finalize(units: list[str], losers: dict[str, list[str]], out: OutputStore, config: ExtractConfig) -> list[str]:
    """Finalizes the units whose marker (named by their duplicate list) is missing; returns all final markers."""
    markers = {name: final_marker(name, losers.get(name, [])) for name in units}
    _remove_stale(set(markers.values()), {name.partition("-")[0] for name in units}, out)
    done = {f"{FINAL_DIR}/{name}" for name in out.list_names(FINAL_DIR)}
    pending = [{"unit": name, "losers": sorted(losers.get(name, []))} for name in units if markers[name] not in done]
    log.info("finalize: %d units, %d done before", len(units), len(units) - len(pending))
    for wave in batched(pending, config.units_per_wave):
        ds = ray.data.from_items(wave, override_num_blocks=_light_blocks(len(wave)))
        _unreserved(ds.map(partial(_finalize_row, out=out), num_cpus=config.cpus_per_task)).materialize()
    return [markers[name] for name in units]


def _finalize_row(row: dict, out: OutputStore) -> dict:
    marker = finalize_unit(str(row["unit"]), [str(k) for k in row["losers"]], out)
    return {"unit": marker["unit"], "pairs": sum(marker["pairs"].values())}


def _remove_stale(markers: set[str], unit_ids: set[str], out: OutputStore) -> None:
    """Final markers made for another duplicate list, and shards of units no longer in the listing."""
    for name in out.list_names(FINAL_DIR):
        if f"{FINAL_DIR}/{name}" not in markers:
            out.delete(f"{FINAL_DIR}/{name}")
    for split in SPLITS:
        for name in out.list_names(split):
            if name.removeprefix("part-").removesuffix(".parquet") not in unit_ids:
                out.delete(f"{split}/{name}")


def _markers(out: OutputStore, paths: list[str]) -> Iterator[dict]:
    return prefetched(out.read_json, paths, threads=16)


def _write_manifest(units: list[str], finals: list[str], out: OutputStore, config: ExtractConfig, layout: str,
                    clock: _Clock) -> dict:
    builder = ManifestBuilder()

    def report_lines() -> Iterator[bytes]:
        for marker in _markers(out, [staged_marker(name) for name in units]):
            yield from builder.add_staged(marker)

    out.write_stream("articles.jsonl", report_lines())
    for marker in _markers(out, finals):
        builder.add_final(marker)
    manifest = builder.manifest()
    manifest.update(source=config.source.uri, layout=layout, output=out.url(), units=len(units),
                    shards={split: f"{out.url(split)}/part-*.parquet" for split in SPLITS},
                    articles_report=out.url("articles.jsonl"), stats_plots=[])
    for name, png in plot_histograms(manifest["stats"]).items():
        out.write_bytes(f"stats/{name}", png)
        manifest["stats_plots"].append(out.url(f"stats/{name}"))
    manifest["seconds"] = clock.report()  # of this run only (a resumed run skips finished work)
    out.write_json("manifest.json", manifest)
    log.info("manifest: %d articles, %d figures, pairs %s, skipped %s", manifest["articles_seen"],
             manifest["figures_found"], manifest["pairs_written"], manifest["skipped"])
    return manifest
