"""Units and the bucketed dedup, without Ray: staging, finalizing, and losers against a brute-force oracle."""
from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.dataset as pads

from biomedclip.pmc.dedup import bucket_losers, write_group_buckets
from biomedclip.pmc.pairs import PairConfig
from biomedclip.pmc.sources import Source, SourceConfig
from biomedclip.pmc.storage import OutputStore
from biomedclip.pmc.units import Unit, finalize_unit, plan_units, prefetched, stage_unit, staged_path
from biomedclip.samples.corpus import write_sample_corpus


def test_units_are_named_by_position_and_content():
    units = list(plan_units([f"r{i}" for i in range(7)], 3))
    assert [u.refs for u in units] == [("r0", "r1", "r2"), ("r3", "r4", "r5"), ("r6",)]
    assert units[0].name.startswith("u0000000-") and units[0].name != Unit(0, ("r0", "r1", "x")).name
    assert units[0].name == Unit(0, ("r0", "r1", "r2")).name


def test_prefetch_keeps_order():
    assert list(prefetched(lambda x: x * x, list(range(20)), threads=3)) == [x * x for x in range(20)]


def test_stage_and_finalize_a_unit(tmp_path):
    write_sample_corpus(tmp_path / "corpus", articles=6, layout="folders", seed=21)
    source = Source(SourceConfig(uri=str(tmp_path / "corpus")))
    out = OutputStore(str(tmp_path / "out"))
    unit = Unit(0, tuple(source.list_refs()))
    marker = stage_unit(unit, source, PairConfig(), out, io_threads=2)
    staged = out.read_table(staged_path(unit.name))
    assert marker["articles"] == 6 and marker["pairs"] == staged.num_rows > 2
    assert [r["article_id"] for r in marker["reports"]] == list(unit.refs)
    loser = staged.column("pair_key")[0].as_py()
    final = finalize_unit(unit.name, [loser], out)
    published = pads.dataset([str(p) for p in (tmp_path / "out").glob("*/part-u0000000.parquet")]).to_table()
    assert published.num_rows == staged.num_rows - 1 == sum(final["pairs"].values())
    assert final["duplicates"] == 1
    assert set(published.column_names) == set(staged.column_names) - {"pair_key", "caption_words"}


def test_bucketed_dedup_matches_brute_force_for_any_bucket_count(tmp_path):
    rng = random.Random(0)
    out = OutputStore(str(tmp_path))
    units, rows = [f"u{i:07d}-x" for i in range(5)], []
    for unit in units:
        keys = [(f"{rng.randrange(40):064x}", f"PMC{rng.randrange(100)}\x1fF{rng.randrange(9)}\x1f{unit}")
                for _ in range(30)]
        out.write_table(staged_path(unit), pa.table({"sha256": [k[0] for k in keys], "pair_key": [k[1] for k in keys]}))
        rows.extend((sha, key, unit) for sha, key in keys)
    kept = {}
    for sha, key, _unit in sorted(rows, key=lambda r: r[1]):
        kept.setdefault(sha, key)
    expected = sorted((unit, key) for sha, key, unit in rows if kept[sha] != key)
    for buckets, groups in ((1, [units]), (4, [units[:2], units[2:]]), (7, [[u] for u in units])):
        directory = f"dedup-{buckets}"
        for g, group in enumerate(groups):
            write_group_buckets(g, group, buckets, directory, out)
        losers = [row for b in range(buckets) for row in bucket_losers(b, len(groups), directory, out)]
        assert sorted((r["unit"], r["pair_key"]) for r in losers) == expected
