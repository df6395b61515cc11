"""Work units: fixed-size runs of consecutive article references, the grain of parallelism and of resuming.

A unit is named by its position and a digest of its references, so a rerun over the same listing finds the units
already done, and a changed listing redoes exactly the units whose content changed. Staging a unit writes its pair
rows (before the global dedup) and then a marker; finalizing it writes its published shards and then a marker.
A marker exists only after everything before it is written, so a run killed at any point loses no finished work.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from biomedclip.io import OutputStore
from biomedclip.pmc.pairs import PairConfig, build_pairs, load_article
from biomedclip.pmc.schema import PAIR_SCHEMA, staged_table
from biomedclip.pmc.sources import Source
from biomedclip.pmc.split import SPLITS
from biomedclip.pmc.stats import table_histograms

STAGED_DIR = "_state/staged"
FINAL_DIR = "_state/final"


def digest(items: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Unit:
    index: int
    refs: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"u{self.index:07d}"

    @property
    def name(self) -> str:
        return f"{self.id}-{digest(self.refs)}"


def plan_units(refs: Iterable[str], per_unit: int) -> Iterator[Unit]:
    for index, chunk in enumerate(batched(refs, per_unit)):
        yield Unit(index, tuple(chunk))


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def staged_path(name: str) -> str:
    return f"{STAGED_DIR}/{name}.parquet"


def staged_marker(name: str) -> str:
    return f"{STAGED_DIR}/{name}.json"


def shard_path(split: str, unit_id: str) -> str:
    return f"{split}/part-{unit_id}.parquet"


def prefetched(fn: Callable, items: list, threads: int) -> Iterator:
    """fn(item) for each item in order, computed up to `threads` items ahead (bounded memory)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending = [pool.submit(fn, item) for item in items[:threads]]
        for index in range(len(items)):
            result = pending.pop(0).result()
            if index + threads < len(items):
                pending.append(pool.submit(fn, items[index + threads]))
            yield result


def stage_unit(unit: Unit, source: Source, config: PairConfig, out: OutputStore, io_threads: int) -> dict:
    """Extracts the pairs of a unit's articles into its staged shard; returns (and writes) its marker."""
    rows, reports = [], []
    for loaded in prefetched(lambda ref: load_article(source, ref), list(unit.refs), io_threads):
        rows.extend(build_pairs(loaded, config))
        reports.append(loaded.report.to_dict())
    out.write_table(staged_path(unit.name), staged_table(rows))
    skipped = Counter()
    for report in reports:
        skipped.update(report["skipped"])
    marker = {
        "unit": unit.name,
        "articles": len(reports),
        "figures": sum(r["figures"] for r in reports),
        "pairs": sum(row["publish"] for row in rows),
        "skipped": dict(skipped),
        "reports": reports,
    }
    out.write_json(staged_marker(unit.name), marker)
    return marker


def final_marker(unit_name: str, losers: list[str]) -> str:
    """Named by the unit's content and its duplicate list: either changing means the unit must be finalized again."""
    return f"{FINAL_DIR}/{unit_name}-{digest(sorted(losers))}.json"


def finalize_unit(unit_name: str, losers: list[str], out: OutputStore) -> dict:
    """Writes the unit's published shards (one per split, duplicates dropped with their panels); returns (and
    writes) its marker."""
    unit_id = unit_name.partition("-")[0]
    table = out.read_table(staged_path(unit_name))
    duplicates = 0
    if losers:
        dropped = pc.is_in(table.column("parent_key"), value_set=pa.array(losers, pa.string()))
        duplicates = table.filter(pc.and_(dropped, table.column("publish"))).num_rows
        table = table.filter(pc.invert(dropped))
    histograms = table_histograms(table)
    table = table.filter(table.column("publish"))
    pairs = {}
    for split in SPLITS:
        part = table.filter(pc.equal(table.column("split"), split))
        pairs[split] = part.num_rows
        if part.num_rows:
            out.write_table(shard_path(split, unit_id), part.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA))
        else:
            out.delete(shard_path(split, unit_id))
    marker = {"unit": unit_name, "pairs": pairs, "duplicates": duplicates, "histograms": histograms}
    out.write_json(final_marker(unit_name, losers), marker)
    return marker
