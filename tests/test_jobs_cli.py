"""Every job's command line, as a person meets it: --help with the usage examples and every default, and exit code 2
with one line naming the problem for a missing file, a wrong key and a wrong type. No case may reach Ray: the
environment points RAY_ADDRESS at a closed port, so a job that tried to connect would fail differently.

Each case runs the job as a command, except a wrong --set key or type: the job must import its library to check
its config (3-8 s a process on 2 busy cores), so those run `JOB.main` in this process, where the imports are
paid once, with Ray's start-up replaced by a tripwire."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from biomedclip import cli
from tests.helpers import load_job

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "jobs/configs/tiny.yaml")
SWEEP = str(REPO / "jobs/configs/sweep_tiny.yaml")
MISSING = "no/such/file.yaml"

# job -> {case: (arguments, text the one-line message must contain)}; {tmp} is an existing empty folder.
CASES = {
    "pretrain": {
        "missing file": (["--config", MISSING], f"--config {MISSING}: no such file"),
        "wrong key": (["--config", TINY, "--set", "train.epoch=3"], "train.epoch: unknown key"),
        "wrong type": (["--config", TINY, "--set", "train.epochs=many"], "train.epochs: expected int"),
    },
    "sweep": {
        "missing file": (["--config", MISSING], f"--config {MISSING}: no such file"),
        "wrong key": (["--config", SWEEP, "--set", "scheduler.metrc=x"], "scheduler.metrc: unknown key"),
        "wrong type": (["--config", SWEEP, "--set", "max_concurrent=many"], "max_concurrent: expected int"),
    },
    "extract": {
        "missing file": (["--source", "no/such/corpus", "--output", "{tmp}/out"], "--source no/such/corpus: no such"),
        "wrong key": (["--source", "{tmp}", "--output", "{tmp}/out", "--set", "sourc.uri=x"], "sourc: unknown key"),
        "wrong type": (["--source", "{tmp}", "--output", "{tmp}/out", "--set", "limit=many"], "limit: expected int"),
    },
    "evaluate": {
        "missing file": (["--checkpoint", "no/such/model", "--task", "retrieval", "--data", "{tmp}"],
                         "--checkpoint no/such/model: no such"),
        "wrong key": (["--checkpoint", "{tmp}", "--task", "retrieval", "--data", "{tmp}", "--set", "embed.size=1"],
                      "embed.size: unknown key"),
        "wrong type": (["--checkpoint", "{tmp}", "--task", "retrieval", "--data", "{tmp}", "--set",
                        "embed.batch_size=many"], "embed.batch_size: expected int"),
    },
    "finetune_vqa": {
        "missing file": (["--checkpoint", "{tmp}", "--dataset", "slake", "--data", "no/such/slake"],
                         "--data no/such/slake: no such"),
        "wrong key": (["--checkpoint", "{tmp}", "--dataset", "slake", "--data", "{tmp}", "--set", "train.epoch=1"],
                      "train.epoch: unknown key"),
        "wrong type": (["--checkpoint", "{tmp}", "--dataset", "slake", "--data", "{tmp}", "--set",
                        "train.epochs=many"], "train.epochs: expected int"),
    },
    "export_open_clip": {
        "missing file": (["--config", TINY, "--checkpoint", "no/such.safetensors", "--output", "{tmp}/out"],
                         "--checkpoint no/such.safetensors: no such"),
        "wrong key": (["--config", TINY, "--output", "{tmp}/out", "--set", "model.embed_dims=8"],
                      "model.embed_dims: unknown key"),
        "wrong type": (["--config", TINY, "--output", "{tmp}/out", "--set", "model.embed_dim=wide"],
                       "model.embed_dim: expected int"),
    },
    "serve_demo": {
        "missing file": (["--model", "no/such/model", "--image-dir", "{tmp}"], "--model no/such/model: no such"),
        "wrong key": (["--model", "{tmp}", "--image-dir", "{tmp}", "--prot", "8000"], "unrecognized arguments: --prot"),
        "wrong type": (["--model", "{tmp}", "--image-dir", "{tmp}", "--port", "http"], "--port: expected a whole"),
    },
    "build_index": {
        "missing file": (["--checkpoint", "no/such/model", "--data", "{tmp}", "--output", "{tmp}/i"],
                         "--checkpoint no/such/model: no such"),
        "wrong key": (["--checkpoint", "{tmp}", "--data", "{tmp}", "--output", "{tmp}/i", "--set", "thumb=1"],
                      "thumb: unknown key"),
        "wrong type": (["--checkpoint", "{tmp}", "--data", "{tmp}", "--output", "{tmp}/i", "--set",
                        "shard_rows=many"], "shard_rows: expected int"),
    },
    "make_pairs": {
        "missing file": (["--input", "no/such/pairs.csv", "--output", "{tmp}/o"], "--input no/such/pairs.csv: no such"),
        "wrong key": (["--input", "{tmp}", "--output", "{tmp}/o", "--vall", "0.2"], "unrecognized arguments: --vall"),
        "wrong type": (["--input", "{tmp}", "--output", "{tmp}/o", "--rows-per-file", "0"], "expected at least 1"),
    },
    # No input files: a wrong option and a wrong value.
    "make_sample_corpus": {
        "wrong key": (["--output", "{tmp}/c", "--artcles", "3"], "unrecognized arguments: --artcles"),
        "wrong type": (["--output", "{tmp}/c", "--articles", "many"], "--articles: expected a whole number"),
    },
    "demo": {
        "wrong key": (["--output", "{tmp}/d", "--artcles", "3"], "unrecognized arguments: --artcles"),
        "wrong type": (["--output", "{tmp}/d", "--articles", "0"], "--articles: expected at least 1"),
    },
}


def run_job(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "RAY_ADDRESS": "127.0.0.1:9"}
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", sorted(CASES))
def test_help_shows_the_usage_examples_and_every_default(name, tmp_path):
    result = run_job(name, ["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    examples = [line.strip() for line in load_job(name).__doc__.splitlines() if line.startswith("    python ")]
    assert examples and all(example in result.stdout for example in examples)
    flat = " ".join(result.stdout.split())  # argparse wraps long help lines
    parser = load_job(name).JOB.parser()
    defaults = [a for a in parser._actions if not cli._no_default(a.default)]
    assert any(a.default == 0 for a in defaults) or name != "make_sample_corpus"  # --seed 0 is a default too
    for action in defaults:
        default = action.default if action.dest != "ray_address" else None
        assert f"(default: {default})" in flat, (action.dest, flat[-600:])


@pytest.mark.parametrize(("name", "case"), [(name, case) for name, cases in sorted(CASES.items()) for case in cases])
def test_a_mistake_is_one_line_and_exit_code_2(name, case, tmp_path, monkeypatch, capsys):
    args, expected = CASES[name][case]
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if "--set" in args:
        monkeypatch.setattr(sys, "argv", [f"{name}.py"])
        monkeypatch.setattr(cli, "start_ray", lambda *_, **__: pytest.fail("a config mistake reached Ray"))
        monkeypatch.chdir(tmp_path)
        code, printed = load_job(name).JOB.main(args), capsys.readouterr()
        stdout, stderr = printed.out, printed.err
    else:
        result = run_job(name, args, tmp_path)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    assert code == 2, stdout + stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert expected in stderr, stderr
    assert stderr.startswith(f"{name}.py: error: ")
    assert "Ray" not in stdout
