"""Exact-duplicate images across the whole dataset, found without a shuffle service in two map-only passes:

1. each group of units writes the (sha256, pair_key, unit) keys of its whole figures split into hash buckets (a
   compound figure's panels are kept or dropped with it: they are not keyed themselves);
2. each bucket reads its files from all groups, sorts, and names as losers every pair whose image hash was already
   seen with a smaller pair key, i.e. the pair with the smallest (pmcid, fig_id) is kept.

Both passes are pure functions of the staged shards, so rerunning them gives the same losers; memory per task is one
group's keys or one bucket's keys.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from biomedclip.io import OutputStore
from biomedclip.pmc.units import staged_path

KEY_COLUMNS = ["sha256", "pair_key"]


def bucket_of(sha256_hex: pa.ChunkedArray, buckets: int) -> pa.Array:
    """Bucket index from the first 8 hex digits of each hash."""
    head = pc.utf8_slice_codeunits(sha256_hex, 0, 8).to_pylist()
    return pa.array([int(h, 16) * buckets >> 32 for h in head], pa.int64())


def bucket_file(directory: str, group: int, bucket: int) -> str:
    return f"{directory}/g{group:06d}-b{bucket:05d}.parquet"


def write_group_buckets(group: int, unit_names: list[str], buckets: int, directory: str, out: OutputStore) -> int:
    """Pass 1: a group's keys, one file per bucket; returns the number of keys."""
    tables = []
    for name in unit_names:
        keys = out.read_table(staged_path(name), columns=[*KEY_COLUMNS, "parent_key"])
        keys = keys.filter(pc.equal(keys.column("pair_key"), keys.column("parent_key"))).select(KEY_COLUMNS)
        tables.append(keys.append_column("unit", pa.array([name] * keys.num_rows, pa.string())))
    empty = pa.table({c: pa.array([], pa.string()) for c in [*KEY_COLUMNS, "unit"]})
    keys = pa.concat_tables(tables) if tables else empty
    bucket = bucket_of(keys.column("sha256"), buckets)
    for b in range(buckets):
        out.write_table(bucket_file(directory, group, b), keys.filter(pc.equal(bucket, b)))
    return keys.num_rows


def bucket_losers(bucket: int, groups: int, directory: str, out: OutputStore) -> list[dict]:
    """Pass 2: the pairs of one bucket whose image was kept for a smaller pair key."""
    keys = pa.concat_tables([out.read_table(bucket_file(directory, g, bucket)) for g in range(groups)])
    if keys.num_rows < 2:
        return []
    keys = keys.sort_by([("sha256", "ascending"), ("pair_key", "ascending")])
    sha = keys.column("sha256").combine_chunks()
    repeated = pc.equal(sha.slice(1), sha.slice(0, len(sha) - 1))
    losers = keys.slice(1).filter(repeated)
    return losers.select(["unit", "pair_key"]).to_pylist()
