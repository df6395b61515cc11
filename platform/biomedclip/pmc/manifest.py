"""The run's manifest: counts summed over the unit markers, and the stats histograms."""
from __future__ import annotations

import json
from collections import Counter

from biomedclip.pmc.split import SPLITS
from biomedclip.pmc.stats import merge_histograms


def is_unreadable(report: dict) -> bool:
    """An article whose files could not be read at all (so none of its figures was even seen): a wrong endpoint,
    missing credentials or a dead mirror shows as many of these."""
    return report["skipped"].get("read_error", 0) > 0 and report["figures"] == 0


class ManifestBuilder:
    def __init__(self):
        self.articles = self.figures = self.extracted = self.unreadable = 0
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
        self.unreadable += sum(1 for report in marker["reports"] if is_unreadable(report))
        return [(json.dumps(report, sort_keys=True) + "\n").encode() for report in marker["reports"]]

    def add_final(self, marker: dict) -> None:
        self.pairs.update(marker["pairs"])
        if marker["duplicates"]:
            self.skipped["duplicate_image"] += marker["duplicates"]
        self.histograms.append(marker["histograms"])

    def manifest(self) -> dict:
        return {
            "articles_seen": self.articles,
            "articles_unreadable": self.unreadable,
            "unreadable_share": round(self.unreadable / self.articles, 4) if self.articles else 0.0,
            "figures_found": self.figures,
            "pairs_extracted": self.extracted,
            "pairs_written": dict(self.pairs),
            "pairs_total": sum(self.pairs.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "stats": merge_histograms(self.histograms),
        }
