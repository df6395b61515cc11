"""Training throughput, measured against baselines in the same run: caption padding, the Ray loop, accumulation, GPU.

    python benchmarks/train_throughput.py                     # CPU: every section below (a few minutes, quiet box)
    python benchmarks/train_throughput.py --sections padding  # one or more of: padding loop pipeline accumulation
    python benchmarks/train_throughput.py --device cuda       # paper model (ViT-B/16 + BERT-base 256), bf16, no Ray

CPU sections (each figure is the median of >= --repeats runs, printed with its min-max spread, and the load average):
- padding: text-tower (forward + backward) and whole-step samples/s at context 256 with the captions padded to the
  context, cut per micro-batch (dynamic padding, the default) and cut after length bucketing, for the tiny and the
  paper-size towers, on token lengths of realdata's ROCO and JATS captions and of a model of PMC's distribution;
- loop: samples/s of training steps over the same Parquet with the same CPUs: the Ray Train loop (1 worker, Ray Data
  decoding on the other CPUs), a plain PyTorch loop with a torch DataLoader decoding in (CPUs - 1) worker processes,
  and the in-memory floor (batches decoded beforehand); the trainer uses 1 torch thread in all three (Ray gives a
  1-CPU worker OMP_NUM_THREADS=1);
- pipeline: the input pipelines alone, images/s per core, against the per-core limit (decode + augment + tokenise of
  the same rows in one process);
- accumulation: one step of k micro-batches against one step of the same global batch (which is a plain one-pass
  step), with the parts it is made of measured alone, so the cost beyond the extra no-grad forwards shows.
The Parquet corpus is built from realdata's figure images (normalised as the extraction does) and real captions.
CUDA mode: images/s of full training steps and model FLOPs utilisation, FLOPs counted by torch's FlopCounterMode
(forward + backward of one step, not counting pass 1's recompute) against the card's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from biomedclip.config import load_config
from biomedclip.model import ModelConfig, build_model
from biomedclip.model.text_tower import TextTower, trim_padding
from biomedclip.train.config import PretrainConfig
from biomedclip.train.optim import OptimConfig, build_optimizer, build_scheduler
from biomedclip.train.step import FP32, Precision, accumulate_gradients, apply_update

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.helpers import jats_captions, real_images, roco_captions  # noqa: E402  (one reader of the real samples)

REALDATA = REPO.parent / "shared" / "realdata"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
CONTEXT = 256
PMC_COVERED_AT_256 = 0.90  # the seed's figure: 256 tokens cover 90% of PMC captions
SECTIONS = ("padding", "loop", "pipeline", "accumulation")


def clock() -> float:
    """Wall time by default; `--clock cpu`: this process's CPU time, which a loaded machine disturbs far less (with
    one torch thread it is the time the work took on one core; for the padding and accumulation sections only)."""
    return CLOCK()


CLOCK = time.perf_counter


def spread(values: list[float]) -> dict:
    """Median, min, max and the number of runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def show(value: dict, unit: str = "") -> str:
    return f"{value['median']:.3g}{unit} [{value['min']:.3g}-{value['max']:.3g}, n={value['runs']}]"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ---------------------------------------------------------------- caption lengths


def caption_lengths(realdata: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Token counts ([CLS] + WordPiece + [SEP]) of the real captions, and a model of PMC's distribution.

    PubMedBERT's vocabulary cannot be downloaded here, so the captions are tokenised by a 4096-piece WordPiece
    vocabulary trained on them (1.6-1.7 pieces per whitespace word; a whole-word vocabulary gives 1.3-1.5). PMC model:
    log-normal with the median of the JATS captions (real PMC articles) and sigma chosen so that P(len <= 256) = 0.9.
    """
    from biomedclip.text import Tokenizer

    roco, jats = roco_captions(realdata), jats_captions(realdata)
    tokenizer = Tokenizer.train(roco + jats, 4096, 512, min_frequency=1)
    sets = {name: (tokenizer.encode(captions) != tokenizer.pad_token_id).sum(axis=1)
            for name, captions in (("roco", roco), ("jats", jats))}
    median = float(np.median(sets["jats"]))
    sigma = math.log(CONTEXT / median) / 1.2815515655446004  # z of the 90th percentile
    model = np.random.default_rng(seed).lognormal(math.log(median), sigma, size=20000)
    sets["pmc-model"] = np.clip(np.rint(model), 3, 512).astype(np.int64)
    return sets


def describe_lengths(sets: dict[str, np.ndarray]) -> dict:
    return {name: {"captions": len(lengths), "median": float(np.median(lengths)),
                   "p90": float(np.percentile(lengths, 90)), "share_within_256": float((lengths <= CONTEXT).mean())}
            for name, lengths in sets.items()}


def token_batch(lengths: np.ndarray, vocab: int, rng: np.random.Generator) -> torch.Tensor:
    """Random ids with the given caption lengths (truncated to the context as the tokenizer does), padded with 0."""
    lengths = np.minimum(lengths, CONTEXT)
    tokens = torch.from_numpy(rng.integers(5, vocab, size=(len(lengths), CONTEXT)))
    tokens[torch.arange(CONTEXT)[None, :] >= torch.from_numpy(lengths)[:, None]] = 0
    tokens[:, 0] = 2
    return tokens


def windows(lengths: np.ndarray, micro: int, per_window: int, repeats: int, vocab: int, seed: int = 1):
    """Per repeat: `per_window` micro-batches drawn at random, and the same rows regrouped by length (bucketing)."""
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        drawn = rng.choice(lengths, size=micro * per_window)
        tokens = token_batch(drawn, vocab, rng)
        by_length = tokens[np.argsort(np.minimum(drawn, CONTEXT), kind="stable")]
        yield list(tokens.split(micro)), list(by_length.split(micro))


# ---------------------------------------------------------------- padding section


def time_text_tower(tower: TextTower, micro_batches: list[torch.Tensor], dynamic: bool) -> float:
    """Seconds for forward + backward of the text tower over the micro-batches."""
    tower.dynamic_padding = dynamic
    started = clock()
    for tokens in micro_batches:
        tower(tokens).sum().backward()
    tower.zero_grad(set_to_none=True)
    return clock() - started


def time_step(model, optimizer, micro_batches: list, dynamic: bool, precision=FP32,
              sync=lambda: None) -> float:
    """Seconds of one optimizer step (accumulate_gradients + apply_update) over the micro-batches."""
    model.text.dynamic_padding = dynamic
    sync()
    started = clock()
    accumulate_gradients(model, micro_batches, precision)
    apply_update(model, optimizer)
    sync()
    return clock() - started


PADDING_MODES = ("full", "dynamic", "bucketed")


def padding_figures(model_cfg: ModelConfig, sets: dict, micro: int, per_window: int, repeats: int,
                    step_micro: int, steps: bool = True) -> dict:
    """Samples/s of the text tower and of whole steps under each padding mode, per caption-length set."""
    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-6, warmup_steps=1))
    vocab = model.text.config.vocab_size
    results = {}
    for name, lengths in sets.items():
        tower_s = {mode: [] for mode in PADDING_MODES}
        step_s = {mode: [] for mode in PADDING_MODES[:2]} if steps else {}
        tower_warm = False
        for drawn, bucketed in windows(lengths, micro, per_window, repeats + 1, vocab):
            runs = {"full": (drawn, False), "dynamic": (drawn, True), "bucketed": (bucketed, True)}
            for mode, (batches, dynamic) in runs.items():  # interleaved, so load drifts hit every mode alike
                seconds = time_text_tower(model.text, batches, dynamic)
                if tower_warm:
                    tower_s[mode].append(len(batches) * micro / seconds)
            pixels = torch.randn(step_micro, 3, model_cfg.vision.image_size, model_cfg.vision.image_size)
            for mode in step_s:
                seconds = time_step(model, optimizer, [(pixels, drawn[0][:step_micro])], mode == "dynamic")
                if tower_warm:
                    step_s[mode].append(step_micro / seconds)
            tower_warm = True  # the first window warms up allocators and kernels
        cut = [trim_padding(b, 0).shape[1] for drawn, _ in windows(lengths, micro, per_window, 8, vocab) for b in drawn]
        tower_median = {mode: statistics.median(v) for mode, v in tower_s.items()}
        results[name] = {
            "text_tower_samples_per_s": {mode: spread(v) for mode, v in tower_s.items()},
            "step_samples_per_s": {mode: spread(v) for mode, v in step_s.items()},
            "text_tower_dynamic_over_full": tower_median["dynamic"] / tower_median["full"],
            "text_tower_bucketed_over_full": tower_median["bucketed"] / tower_median["full"],
            "step_dynamic_over_full": statistics.median(step_s["dynamic"]) / statistics.median(step_s["full"])
            if steps else None,
            "mean_cut_length": statistics.mean(cut),
        }
    return results


def run_padding(args) -> dict:
    sets = {name: lengths for name, lengths in caption_lengths(args.realdata).items() if name in args.sets}
    figures = {"lengths": describe_lengths(sets), "load_before": load_average()}
    tiny = load_config(ModelConfig, None, ["embed_dim=64", "vision.preset=vit-tiny", "vision.patch_dropout=0.5",
                                           "text.preset=bert-tiny", f"text.context_length={CONTEXT}"])
    paper = load_config(PretrainConfig, REPO / "jobs/configs/paper.yaml").model
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        if "tiny" in args.towers:
            figures["tiny"] = padding_figures(tiny, sets, micro=16, per_window=4, repeats=args.repeats,
                                              step_micro=16)
        if "paper" in args.towers:
            figures["paper"] = padding_figures(paper, sets, micro=4, per_window=2, repeats=args.paper_repeats,
                                               step_micro=4, steps=not args.text_only)
    finally:
        torch.set_num_threads(threads)
    figures["load_after"] = load_average()
    return figures


# ---------------------------------------------------------------- the real-image Parquet corpus


def write_real_corpus(out_dir: Path, realdata: Path, train: int, val: int, rows_per_file: int) -> Path:
    """train/ and val/ Parquet shards in the pair schema: realdata's figure images normalised as the extraction does
    (RGB, shorter side <= 512, JPEG) cycled under real ROCO and JATS captions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from biomedclip.pmc.images import ImageConfig, normalize_image
    from biomedclip.pmc.schema import PAIR_SCHEMA
    from biomedclip.pmc.skips import Skipped

    images = []
    for path in real_images(realdata):
        with contextlib.suppress(Skipped):
            images.append(normalize_image(path.read_bytes(), ImageConfig()))
    captions = roco_captions(realdata) + jats_captions(realdata)
    for split, count in (("train", train), ("val", val)):
        rows = []
        for index in range(count):
            image = images[index % len(images)]
            rows.append({"pmcid": f"PMC{index}", "pmid": None, "fig_id": f"{split}-F{index}", "label": None,
                         "caption": captions[(index * 7) % len(captions)], "inline_refs": "", "image": image.jpeg,
                         "width": image.width, "height": image.height, "orig_width": image.orig_width,
                         "orig_height": image.orig_height, "license": "CC BY", "split": split,
                         "sha256": image.sha256, "doi": None})
        table = pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(0, count, rows_per_file)):
            pq.write_table(table.slice(start, rows_per_file), out_dir / split / f"part-{part:05d}.parquet")
    return out_dir


def corpus_tokenizer(data_dir: Path, cfg: PretrainConfig):
    """The vocabulary the pretraining job trains on the same captions (data.vocab_size of the Ray run below)."""
    from biomedclip.data.train_input import iter_captions
    from biomedclip.text import Tokenizer

    return Tokenizer.train(iter_captions(str(data_dir)), 512, cfg.model.text.context_length)


# ---------------------------------------------------------------- loop section


def steady_rates(step_seconds: list[list[float]], batch: int, skip: int = 2) -> list[float]:
    """One figure per epoch: samples/s of its steps after the first `skip` (pipeline start-up), median."""
    return [batch / statistics.median(epoch[skip:]) for epoch in step_seconds]


def ray_loop(cfg_path: Path, batch: int, epochs: int, data_dir: Path, out_dir: Path) -> list[float]:
    import ray

    from biomedclip.train.trainer import run_pretraining

    cfg = load_config(PretrainConfig, cfg_path, [
        f"data.path={data_dir}", f"run.output_dir={out_dir}", f"data.micro_batch={batch}", "data.augment=true",
        "data.vocab_size=512", f"train.epochs={epochs}", f"train.curriculum=[{{global_batch: {batch}}}]",
        "run.num_workers=1", "run.export=false", f"data.shuffle_buffer={batch}", "train.log_every_steps=1000",
        "train.unmasked_epochs=0", "run.keep_checkpoints=1"])
    ray.init(address="local", include_dashboard=False)
    try:
        result = run_pretraining(cfg, progress=lambda line: None).result
    finally:
        ray.shutdown()
    with result.checkpoint.as_directory() as directory:
        history = torch.load(Path(directory) / "train_state.pt", weights_only=False)["progress"]["history"]
    seconds = [batch / value for _, value in history["train/samples_per_s"]]
    per_epoch = len(seconds) // epochs
    return steady_rates([seconds[e * per_epoch:(e + 1) * per_epoch] for e in range(epochs)], batch)


class ParquetBatches(torch.utils.data.Dataset):
    """A torch Dataset over the same Parquet rows, decoding a whole batch per item with the Ray pipeline's function."""

    def __init__(self, data_dir: Path, tokenizer, image_size: int, augment: bool):
        import pyarrow.parquet as pq

        from biomedclip.pmc.schema import MODEL_INPUT_COLUMNS

        self.table = pq.read_table(data_dir / "train", columns=MODEL_INPUT_COLUMNS)
        self.kwargs = {"tokenizer_json": tokenizer.backend.to_str(), "context_length": tokenizer.context_length,
                       "image_size": image_size, "augment": augment}

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        from biomedclip.data.train_input import PIXELS, TOKENS, preprocess_batch

        rows = self.table.take(indices).to_pydict()
        batch = preprocess_batch({key: np.asarray(values, dtype=object) for key, values in rows.items()},
                                 **self.kwargs)
        return torch.from_numpy(batch[PIXELS]), torch.from_numpy(batch[TOKENS])


def dataloader(dataset: ParquetBatches, batch: int, workers: int, seed: int):
    sampler = torch.utils.data.BatchSampler(
        torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)), batch, drop_last=True)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                                       prefetch_factor=2 if workers else None)


def timed_epochs(cfg: PretrainConfig, vocab: int, epochs_of_batches, epochs: int) -> list[list[float]]:
    """Seconds per step (wall time between step ends, so data waits count), per epoch, of the same training loop."""
    model_cfg = dataclasses.replace(cfg.model, text=dataclasses.replace(cfg.model.text, vocab_size=vocab))
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_cfg).train()
    optimizer = build_optimizer(model, cfg.train.optim)
    scheduler = build_scheduler(optimizer, cfg.train.optim.warmup_steps, 10_000)
    out = []
    for epoch in range(epochs):
        seconds, last = [], time.perf_counter()
        for pixels, tokens in epochs_of_batches(epoch):
            accumulate_gradients(model, [(pixels, tokens)])
            apply_update(model, optimizer, scheduler, cfg.train.optim.grad_clip)
            now = time.perf_counter()
            seconds.append(now - last)
            last = now
        out.append(seconds)
    return out


def run_loop(args, data_dir: Path, tmp: Path) -> dict:
    cfg = load_config(PretrainConfig, args.config, ["data.augment=true"])
    tokenizer = corpus_tokenizer(data_dir, cfg)
    dataset = ParquetBatches(data_dir, tokenizer, cfg.model.vision.image_size, augment=True)
    cpus = os.cpu_count()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker (1 CPU -> OMP_NUM_THREADS=1)
    try:
        loader = timed_epochs(cfg, tokenizer.vocab_size,
                              lambda epoch: dataloader(dataset, args.batch, cpus - 1, epoch), args.repeats)
        decoded = list(dataloader(dataset, args.batch, 0, 0))
        floor = timed_epochs(cfg, tokenizer.vocab_size, lambda epoch: decoded, args.repeats)
    finally:
        torch.set_num_threads(threads)
    ray = ray_loop(args.config, args.batch, args.repeats, data_dir, tmp / "run")
    figures = {"cpus": cpus, "trainer_threads": 1, "dataloader_workers": cpus - 1,
               "ray_samples_per_s": spread(ray),
               "dataloader_samples_per_s": spread(steady_rates(loader, args.batch)),
               "in_memory_samples_per_s": spread(steady_rates(floor, args.batch))}
    ray_median = figures["ray_samples_per_s"]["median"]
    figures["ray_over_dataloader"] = ray_median / figures["dataloader_samples_per_s"]["median"]
    figures["ray_over_in_memory"] = ray_median / figures["in_memory_samples_per_s"]["median"]
    return figures


# ---------------------------------------------------------------- pipeline section


def run_pipeline(args, data_dir: Path) -> dict:
    """Images/s of the input pipelines alone (all CPUs decode), per core, against one core's limit."""
    import ray

    from biomedclip.data.train_input import training_datasets

    cfg = load_config(PretrainConfig, args.config)
    tokenizer = corpus_tokenizer(data_dir, cfg)
    size, cpus = cfg.model.vision.image_size, os.cpu_count()
    dataset = ParquetBatches(data_dir, tokenizer, size, augment=True)
    rows = len(dataset)

    def rate(batches) -> tuple[float, float]:
        """Images/s of a whole pass, and after its first batch (without the pipeline's start-up)."""
        started, count = time.perf_counter(), 0
        for pixels, _ in batches:
            if not count:
                first_at, first = time.perf_counter(), len(pixels)
            count += len(pixels)
        ended = time.perf_counter()
        return count / (ended - started), (count - first) / (ended - first_at)

    one_core = [rate(dataloader(dataset, cfg.data.map_batch_size, 0, r))[0] for r in range(args.repeats)]
    loader = [rate(dataloader(dataset, cfg.data.map_batch_size, cpus, r)) for r in range(args.repeats)]
    ray.init(address="local", include_dashboard=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().op_resource_reservation_enabled = False  # as run_pretraining sets it
        train = training_datasets(str(data_dir), tokenizer, size, augment=True,
                                  batch_size=cfg.data.map_batch_size)["train"]
        ray_rates = [rate((b["pixels"], None) for b in train.iter_batches(batch_size=args.batch))
                     for _ in range(args.repeats)]
    finally:
        ray.shutdown()
    limit = statistics.median(one_core)
    figures = {"rows_per_pass": rows, "cpus": cpus, "one_core_limit_images_per_s": spread(one_core)}
    for name, rates in (("ray_data", ray_rates), ("dataloader", loader)):
        for index, kind in enumerate(("pass", "steady")):
            per_core = [r[index] / cpus for r in rates]
            figures[f"{name}_{kind}_images_per_s_per_core"] = spread(per_core)
            figures[f"{name}_{kind}_per_core_over_limit"] = statistics.median(per_core) / limit
    return figures


# ---------------------------------------------------------------- accumulation section


def run_accumulation(args) -> dict:
    """k micro-batches against one step of the same global batch, and the parts: no-grad and grad passes alone."""
    cfg = load_config(PretrainConfig, args.config)
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-6, warmup_steps=1))
    rng = np.random.default_rng(0)
    lengths = caption_lengths(args.realdata)["roco"]
    pixels = torch.randn(args.batch, 3, cfg.model.vision.image_size, cfg.model.vision.image_size)
    tokens = token_batch(rng.choice(lengths, args.batch), model.text.config.vocab_size, rng)
    tokens = tokens[:, :cfg.model.text.context_length]
    one, micro = [(pixels, tokens)], list(zip(pixels.chunk(args.k), tokens.chunk(args.k)))

    def forward(batches) -> float:
        started = clock()
        with torch.no_grad():
            for p, t in batches:
                model(p, t)
        return clock() - started

    def forward_backward(batches) -> float:
        started = clock()
        for p, t in batches:
            out = model(p, t)
            (out["image_features"].sum() + out["text_features"].sum()).backward()
        model.zero_grad(set_to_none=True)
        return clock() - started

    times = {"step_1": [], "step_k": [], "forward_k": [], "grad_pass_1": [], "grad_pass_k": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        for repeat in range(args.repeats + 1):  # interleaved; the first round warms up
            round_ = {"step_1": time_step(model, optimizer, one, True),
                      "step_k": time_step(model, optimizer, micro, True),
                      "forward_k": forward(micro[1:]), "grad_pass_1": forward_backward(one),
                      "grad_pass_k": forward_backward(micro)}
            if repeat:
                for key, value in round_.items():
                    times[key].append(value)
    finally:
        torch.set_num_threads(threads)
    median = {key: statistics.median(value) for key, value in times.items()}
    return {"batch": args.batch, "k": args.k, "threads": args.threads or threads,
            "seconds": {key: spread(value) for key, value in times.items()},
            "ratio_k_over_1": median["step_k"] / median["step_1"],
            "ideal_ratio_flops": (4 * args.k - 1) / (3 * args.k),
            "parts_ratio": (median["grad_pass_k"] + median["forward_k"]) / median["grad_pass_1"],
            "overhead_beyond_parts_s": median["step_k"] - median["step_1"]
            - (median["grad_pass_k"] + median["forward_k"] - median["grad_pass_1"])}


# ---------------------------------------------------------------- CPU report


def run_cpu(args) -> dict:
    figures = {"load_average_start": load_average(), "cpus": os.cpu_count(), "clock": args.clock}

    def done(section: str, result: dict) -> None:  # each section as it ends: a loaded box may not reach the last
        figures[section] = result
        print(json.dumps({section: result, "load_average": load_average()}), flush=True)

    if "padding" in args.sections:
        done("padding", run_padding(args))
    if "accumulation" in args.sections:
        done("accumulation", run_accumulation(args))
    with tempfile.TemporaryDirectory() as tmp:
        if "pipeline" in args.sections:
            data = write_real_corpus(Path(tmp) / "pipeline", args.realdata, train=args.pipeline_rows, val=0,
                                     rows_per_file=128)
            done("pipeline", run_pipeline(args, data))
        if "loop" in args.sections:
            data = write_real_corpus(Path(tmp) / "loop", args.realdata, train=args.batch * args.steps,
                                     val=args.batch, rows_per_file=args.batch * 4)
            done("loop", run_loop(args, data, Path(tmp)))
    figures["load_average_end"] = load_average()
    return figures


def print_tables(figures: dict) -> None:
    print(f"\nload average (1, 5, 15 min): start {figures['load_average_start']}, end {figures['load_average_end']}; "
          f"{figures['cpus']} CPUs; padding and accumulation timed by the {figures['clock']} clock")
    if "padding" in figures:
        padding = figures["padding"]
        for name, stats in padding["lengths"].items():
            print(f"caption tokens {name}: {stats['captions']} captions, median {stats['median']:.0f}, "
                  f"p90 {stats['p90']:.0f}, {100 * stats['share_within_256']:.0f}% within 256")
        print("\n| towers | captions | cut to (mean) | text tower samples/s full / dynamic / bucketed | "
              "text dynamic/full | text bucketed/full | step samples/s full / dynamic | step dynamic/full |")
        print("|---|---|---|---|---|---|---|---|")
        for towers in ("tiny", "paper"):
            for name, row in padding.get(towers, {}).items():
                tower, step = row["text_tower_samples_per_s"], row["step_samples_per_s"]
                print(f"| {towers} | {name} | {row['mean_cut_length']:.0f} | "
                      f"{' / '.join(show(tower[m]) for m in PADDING_MODES)} | "
                      f"**{row['text_tower_dynamic_over_full']:.2f}x** | {row['text_tower_bucketed_over_full']:.2f}x | "
                      f"{' / '.join(show(step[m]) for m in step) or '-'} | "
                      f"{row['step_dynamic_over_full'] or 0:.2f}x |")
    if "pipeline" in figures:
        p = figures["pipeline"]
        print(f"\ninput pipeline, images/s per core ({p['cpus']} cores, {p['rows_per_pass']} rows a pass), one-core "
              f"limit {show(p['one_core_limit_images_per_s'])}:")
        for name in ("ray_data", "dataloader"):
            print(f"  {name}: whole pass {show(p[f'{name}_pass_images_per_s_per_core'])} "
                  f"({p[f'{name}_pass_per_core_over_limit']:.2f} of the limit), after the first batch "
                  f"{show(p[f'{name}_steady_images_per_s_per_core'])} "
                  f"(**{p[f'{name}_steady_per_core_over_limit']:.2f}** of the limit)")
    if "loop" in figures:
        loop = figures["loop"]
        print(f"\ntraining loop, samples/s ({loop['cpus']} CPUs, trainer {loop['trainer_threads']} thread): Ray "
              f"{show(loop['ray_samples_per_s'])}, DataLoader ({loop['dataloader_workers']} workers) "
              f"{show(loop['dataloader_samples_per_s'])}, in-memory floor {show(loop['in_memory_samples_per_s'])}; "
              f"Ray/DataLoader **{loop['ray_over_dataloader']:.2f}**, Ray/in-memory {loop['ray_over_in_memory']:.2f}")
    if "accumulation" in figures:
        acc = figures["accumulation"]
        s = acc["seconds"]
        print(f"\naccumulation (batch {acc['batch']}, k={acc['k']}, {acc['threads']} threads): step k=1 "
              f"{show(s['step_1'], 's')}, k={acc['k']} {show(s['step_k'], 's')}: **{acc['ratio_k_over_1']:.2f}x** "
              f"(FLOPs ideal {acc['ideal_ratio_flops']:.2f}x, its parts measured alone {acc['parts_ratio']:.2f}x, "
              f"time beyond the parts {acc['overhead_beyond_parts_s'] * 1000:.1f} ms)")


# ---------------------------------------------------------------- CUDA


def random_batch(n: int, image_size: int, context: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.randn(n, 3, image_size, image_size, device=device)
    tokens = torch.randint(5, vocab, (n, context), device=device)
    tokens[:, 0] = 2
    return pixels, tokens


def time_steps(model, micro_batches, steps: int, warmup: int, precision: Precision, sync=lambda: None) -> float:
    """Seconds per optimizer step (median after warmup)."""
    optimizer = build_optimizer(model, OptimConfig(lr=1e-5, warmup_steps=1))
    times = [time_step(model, optimizer, micro_batches, True, precision, sync) for _ in range(warmup + steps)]
    return statistics.median(times[warmup:])


def model_flops_per_step(model, pixels, tokens, precision: Precision, device) -> float:
    """Forward + backward FLOPs of one step on this batch (the model's FLOPs; pass 1's recompute not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, precision.autocast(device):
        out = model(pixels, tokens)
        (out["image_features"].sum() + out["text_features"].sum()).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_cuda(args) -> dict:
    device = torch.device("cuda")
    cfg = load_config(PretrainConfig, REPO / "jobs/configs/paper.yaml")
    if args.no_patch_dropout:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, vision=dataclasses.replace(cfg.model.vision, patch_dropout=0.0)))
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    precision = Precision(torch.bfloat16)
    pixels, tokens = random_batch(args.batch, cfg.model.vision.image_size, cfg.model.text.context_length,
                                  cfg.model.text.vocab, device)
    micro = list(zip(pixels.chunk(args.k), tokens.chunk(args.k)))
    one = time_steps(model, [(pixels, tokens)], args.steps, 3, precision, torch.cuda.synchronize)
    accumulated = time_steps(model, micro, args.steps, 3, precision, torch.cuda.synchronize)
    flops = model_flops_per_step(model, pixels, tokens, precision, device)
    name = torch.cuda.get_device_name(device)
    peak = args.peak_tflops or next((v for key, v in PEAK_BF16_TFLOPS.items() if key in name), None)
    return {
        "device": name, "batch": args.batch, "patch_dropout": cfg.model.vision.patch_dropout,
        "images_per_s": args.batch / one, "images_per_s_accumulated": args.batch / accumulated,
        "accumulation_k": args.k, "accumulation_cost_ratio": accumulated / one,
        "model_tflops_per_step": flops / 1e12, "mfu": (flops / one) / (peak * 1e12) if peak else None,
        "peak_bf16_tflops": peak, "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="CPU sections")
    parser.add_argument("--towers", nargs="+", choices=("tiny", "paper"), default=["tiny", "paper"],
                        help="CPU padding section: tower sizes")
    parser.add_argument("--sets", nargs="+", choices=("roco", "jats", "pmc-model"),
                        default=["roco", "jats", "pmc-model"], help="CPU padding section: caption-length sets")
    parser.add_argument("--text-only", action="store_true", help="CPU padding section: no whole-step figures")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="CPU padding and accumulation sections: wall time, or this process's CPU time")
    parser.add_argument("--config", type=Path, default=REPO / "jobs/configs/tiny.yaml", help="CPU loop's model")
    parser.add_argument("--realdata", type=Path, default=REALDATA)
    parser.add_argument("--batch", type=int, default=None, help="global batch (CPU 16, CUDA 128)")
    parser.add_argument("--k", type=int, default=4, help="micro-batches for the accumulation comparison")
    parser.add_argument("--steps", type=int, default=None, help="CPU: steps per epoch of the loop; CUDA: timed steps")
    parser.add_argument("--repeats", type=int, default=5, help="CPU: runs behind each figure (tiny model)")
    parser.add_argument("--pipeline-rows", type=int, default=512, help="CPU: rows of the input pipeline's pass")
    parser.add_argument("--paper-repeats", type=int, default=3, help="CPU: runs behind each paper-size figure")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU padding and accumulation: torch threads (0: torch's default)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, for MFU")
    parser.add_argument("--no-patch-dropout", action="store_true", help="CUDA: time the unmasked model")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    cuda = args.device == "cuda"
    args.batch = args.batch or (128 if cuda else 16)
    args.steps = args.steps or (10 if cuda else 12)
    figures = run_cuda(args) if cuda else run_cpu(args)
    if cuda:
        print(json.dumps(figures, indent=1))
    else:
        print_tables(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
