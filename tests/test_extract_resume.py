"""A real extraction job killed midway (SIGKILL to its process group) and run again gives exactly the pairs of an
uninterrupted run: none missing, none twice, finished units not redone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from biomedclip.data.extract import ExtractConfig, run_extraction
from biomedclip.pmc.sources import SourceConfig
from biomedclip.pmc.split import SPLITS
from biomedclip.samples.corpus import write_sample_corpus

REPO = Path(__file__).resolve().parent.parent


def published(output: Path) -> list[dict]:
    rows = []
    for split in SPLITS:
        if (output / split).is_dir():
            rows.extend(pads.dataset(str(output / split), format="parquet").to_table().to_pylist())
    return sorted(rows, key=lambda r: (r["pmcid"], r["fig_id"]))


def kill_after_units(command: list[str], units: int) -> list[str]:
    """Runs the job and SIGKILLs its whole process group (driver and its Ray) once it has staged `units` units."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    lines, staged = [], 0
    try:
        for line in process.stdout:
            lines.append(line)
            staged += "biomedclip.data.extract: staged u" in line
            if staged >= units:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert staged >= units, "".join(lines[-30:])
    return lines


@pytest.mark.slow
def test_killed_run_resumes_to_exactly_the_uninterrupted_result(ray_session, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(corpus, articles=50, layout="tar", seed=9)
    killed = tmp_path / "killed"
    kill_after_units([sys.executable, "jobs/extract.py", "--source", str(corpus), "--output", str(killed),
                      "--num-cpus", "1", "--set", "articles_per_unit=2", "--verbose"], units=3)
    markers = {p.name: p.stat().st_mtime_ns for p in (killed / "_state/staged").glob("*.json")}
    assert 3 <= len(markers) < 25 and not (killed / "manifest.json").exists()

    config = ExtractConfig(source=SourceConfig(uri=str(corpus)), output=str(killed), articles_per_unit=2)
    resumed = run_extraction(config)
    clean = ExtractConfig(source=config.source, output=str(tmp_path / "clean"), articles_per_unit=2)
    uninterrupted = run_extraction(clean)
    assert published(killed) == published(tmp_path / "clean")
    assert resumed["pairs_written"] == uninterrupted["pairs_written"] and resumed["skipped"] == uninterrupted["skipped"]
    assert resumed["articles_seen"] == 50
    assert {name: (killed / "_state/staged" / name).stat().st_mtime_ns for name in markers} == markers
    assert not list((killed / "_state/tmp").iterdir())  # half-written files of the killed run are gone
