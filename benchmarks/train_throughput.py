"""Training throughput: the Ray Train loop against a plain PyTorch loop, the cost of accumulation, GPU images/s and MFU.

    python benchmarks/train_throughput.py                       # CPU, tiny model: Ray/plain ratio and k-step cost
    python benchmarks/train_throughput.py --device cuda         # paper model (ViT-B/16 + BERT-base 256), bf16, no Ray

CPU mode, measured in the same run on the same machine:
- plain: one process, batches already decoded in memory, `accumulate_gradients` + `apply_update` (the floor);
- ray:   `jobs/pretrain`'s loop on a 1-worker TorchTrainer over Parquet through Ray Data (decode and tokenise in
         map_batches); samples/s counts wall time between steps, so data waits show;
- accumulation: one step of k micro-batches against one step on the same global batch (extra no-grad forward).
CUDA mode: images/s of full training steps and model FLOPs utilisation, FLOPs counted by torch's FlopCounterMode
(forward + backward of one step, not counting pass 1's recompute) against the card's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from biomedclip.config import load_config
from biomedclip.model import build_model
from biomedclip.train.config import PretrainConfig
from biomedclip.train.optim import OptimConfig, build_optimizer, build_scheduler
from biomedclip.train.step import Precision, accumulate_gradients, apply_update

REPO = Path(__file__).resolve().parent.parent
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def random_batch(n: int, image_size: int, context: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.randn(n, 3, image_size, image_size, device=device)
    tokens = torch.randint(5, vocab, (n, context), device=device)
    tokens[:, 0] = 2
    return pixels, tokens


def time_steps(model, micro_batches, steps: int, warmup: int, precision: Precision, sync=lambda: None) -> float:
    """Seconds per optimizer step (median after warmup)."""
    optimizer = build_optimizer(model, OptimConfig(lr=1e-5, warmup_steps=1))
    scheduler = build_scheduler(optimizer, 1, steps + warmup)
    times = []
    for index in range(warmup + steps):
        sync()
        started = time.perf_counter()
        accumulate_gradients(model, micro_batches, precision)
        apply_update(model, optimizer, scheduler)
        sync()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def plain_and_accumulation(cfg: PretrainConfig, global_batch: int, k: int, steps: int, data_dir: Path) -> dict:
    """The in-memory floor on real decoded data, and k micro-batches against one step of the same global batch."""
    import pyarrow.parquet as pq

    from biomedclip.data.train_input import PIXELS, TOKENS, preprocess_batch
    from biomedclip.text import Tokenizer

    table = pq.read_table(data_dir / "train").slice(0, global_batch).to_pydict()
    tokenizer = Tokenizer.train(table["caption"], 512, cfg.model.text.context_length)
    batch = preprocess_batch({key: table[key] for key in ("pmcid", "fig_id", "caption", "image")},
                             tokenizer_json=tokenizer.backend.to_str(), context_length=tokenizer.context_length,
                             image_size=cfg.model.vision.image_size, augment=False)
    pixels, tokens = torch.from_numpy(batch[PIXELS]), torch.from_numpy(batch[TOKENS])
    text = dataclasses.replace(cfg.model.text, vocab_size=tokenizer.vocab_size)
    model_cfg = dataclasses.replace(cfg.model, text=text)
    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    one = time_steps(model, [(pixels, tokens)], steps, 2, Precision(cfg.train.bf16))
    micro_batches = list(zip(pixels.chunk(k), tokens.chunk(k)))
    accumulated = time_steps(model, micro_batches, steps, 2, Precision(cfg.train.bf16))
    return {"plain_samples_per_s": global_batch / one, "accumulation_k": k,
            "accumulation_cost_ratio": accumulated / one}


def ray_loop(cfg_path: Path, global_batch: int, steps: int, data_dir: Path, out_dir: Path) -> float:
    import ray

    from biomedclip.train.trainer import run_pretraining

    cfg = load_config(PretrainConfig, cfg_path, [
        f"data.path={data_dir}", f"run.output_dir={out_dir}", f"data.micro_batch={global_batch}",
        "data.augment=false", "data.vocab_size=512", "train.epochs=1",
        f"train.curriculum=[{{global_batch: {global_batch}}}]",
        "run.num_workers=1", "run.export=false", f"data.shuffle_buffer={global_batch}", "train.log_every_steps=1000",
        "train.unmasked_epochs=0"])
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    result = run_pretraining(cfg, progress=lambda line: None).result
    with result.checkpoint.as_directory() as directory:
        history = torch.load(Path(directory) / "train_state.pt", weights_only=False)["progress"]["history"]
    rates = [value for _, value in history["train/samples_per_s"]][2:]  # after warmup
    return statistics.median(rates)


def run_cpu(args) -> dict:
    from biomedclip.samples.shapes import write_shapes_corpus

    cfg = load_config(PretrainConfig, args.config)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_shapes_corpus(Path(tmp) / "data", train=args.batch * args.steps, val=args.batch,
                                   rows_per_file=args.batch)
        figures = plain_and_accumulation(cfg, args.batch, args.k, args.steps, data)
        figures["ray_samples_per_s"] = ray_loop(args.config, args.batch, args.steps, data, Path(tmp) / "run")
    figures["ray_over_plain"] = figures["ray_samples_per_s"] / figures["plain_samples_per_s"]
    return figures


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
    precision = Precision(bf16=True)
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
    parser.add_argument("--config", type=Path, default=REPO / "jobs/configs/tiny.yaml", help="CPU mode's model")
    parser.add_argument("--batch", type=int, default=None, help="global batch (CPU 16, CUDA 128)")
    parser.add_argument("--k", type=int, default=4, help="micro-batches for the accumulation comparison")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (CPU 8, CUDA 10)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, for MFU")
    parser.add_argument("--no-patch-dropout", action="store_true", help="CUDA: time the unmasked model")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.batch = args.batch or (128 if cuda else 16)
    args.steps = args.steps or (10 if cuda else 8)
    figures = run_cuda(args) if cuda else run_cpu(args)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
