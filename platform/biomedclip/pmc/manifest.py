"""The run's manifest: counts summed over the unit markers, and the stats histograms."""
from __future__ import annotations

import json
from collections import Counter

from biomedclip.pmc.split import SPLITS
from biomedclip.pmc.stats import merge_histograms


class ManifestBuilder:
    def __init__(self):
        self.articles = self.figures = self.extracted = 0
        self.skipped: Counter = Counter()
        self.pairs: Counter = Counter(dict.fromkeys(SPLITS, 0))
        self.histograms: list[dict] = []

    def add_staged(self, marker: dict) -> list[bytes]:
        """Counts a staged unit; returns its per-article report lines (JSON: id, pmcid, figures, pairs extracted
        before the dedup, skip reasons)."""
        self.articles += marker["articles"]
        self.figures += marker["figures"]
        self.extracted += marker["pairs"]
        self.skipped.update(marker["skipped"])
        return [(json.dumps(report, sort_keys=True) + "\n").encode() for report in marker["reports"]]

    def add_final(self, marker: dict) -> None:
        self.pairs.update(marker["pairs"])
        if marker["duplicates"]:
            self.skipped["duplicate_image"] += marker["duplicates"]
        self.histograms.append(marker["histograms"])

    def manifest(self) -> dict:
        return {
            "articles_seen": self.articles,
            "figures_found": self.figures,
            "pairs_extracted": self.extracted,
            "pairs_written": dict(self.pairs),
            "pairs_total": sum(self.pairs.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "stats": merge_histograms(self.histograms),
        }
