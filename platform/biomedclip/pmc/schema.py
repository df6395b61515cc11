"""Arrow schemas of the pair shards: the published one, and the staged one with two working columns."""
from __future__ import annotations

import pyarrow as pa

PAIR_SCHEMA = pa.schema([
    pa.field("pmcid", pa.string(), nullable=False),
    pa.field("pmid", pa.string()),
    pa.field("fig_id", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("caption", pa.string(), nullable=False),
    pa.field("inline_refs", pa.string(), nullable=False),  # citing sentences, one per line
    pa.field("image", pa.binary(), nullable=False),  # JPEG
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("orig_width", pa.int32(), nullable=False),
    pa.field("orig_height", pa.int32(), nullable=False),
    pa.field("license", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # train | val | test
    pa.field("sha256", pa.string(), nullable=False),  # hex, of the decoded pixels
    pa.field("doi", pa.string()),
    # Panels of compound figures (pmc/panels.py): null on whole-figure pairs.
    pa.field("panel", pa.string()),  # the panel's letter (upper case)
    pa.field("parent_fig_id", pa.string()),  # the whole figure's fig_id
    pa.field("panel_box", pa.list_(pa.int32(), 4)),  # x0, y0, x1, y1 in the whole figure's original pixels
])

# What training, evaluation and indexing read of a pair shard.
MODEL_INPUT_COLUMNS = ["pmcid", "fig_id", "caption", "image"]

# Working columns: a panel row's parent_key is its whole figure's pair_key (dedup keeps or drops them together);
# publish is false for a whole figure replaced by its panels.
STAGED_SCHEMA = pa.schema([
    *PAIR_SCHEMA,
    pa.field("pair_key", pa.string(), nullable=False),
    pa.field("caption_words", pa.int32(), nullable=False),
    pa.field("parent_key", pa.string(), nullable=False),
    pa.field("publish", pa.bool_(), nullable=False),
])


def staged_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=STAGED_SCHEMA)
