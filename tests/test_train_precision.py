"""Precision chosen from the device, and fp16's loss scaling through the shared step (`train.step`).

The device rule is tested on (device type, bf16 support) pairs: this machine has no GPU. The GradScaler path runs for
real on the CPU (torch autocasts to fp16 and scales losses there too).
"""
import pytest
import torch

from biomedclip.train.checkpointing import Progress, read_train_state, write_train_state
from biomedclip.train.optim import OptimConfig, build_optimizer, build_scheduler
from biomedclip.train.step import FP32, Precision, accumulate_gradients, optimizer_step, resolve_precision
from tests.test_train_step import global_batch, micro_batches, tiny_model


@pytest.mark.parametrize("requested, device, bf16, expected", [
    ("auto", "cuda", True, "bf16"), ("auto", "cuda", False, "fp16"), ("auto", "cpu", False, "fp32"),
    ("fp32", "cuda", True, "fp32"), ("fp16", "cuda", True, "fp16"), ("bf16", "cpu", False, "bf16"),
])
def test_precision_follows_the_device(requested, device, bf16, expected):
    assert resolve_precision(requested, device, bf16) == expected


def test_bf16_on_a_gpu_without_it_is_refused():
    with pytest.raises(ValueError, match="no bf16"):
        resolve_precision("bf16", "cuda", bf16_supported=False)


def test_precisions_built_for_the_cpu():
    cpu = torch.device("cpu")
    assert Precision.for_device("auto", cpu) == FP32
    fp16 = Precision.for_device("fp16", cpu)
    assert fp16.name == "fp16" and isinstance(fp16.scaler, torch.amp.GradScaler)
    assert Precision.for_device("bf16", cpu).name == "bf16" and Precision.for_device("bf16", cpu).scaler is None


def _linear_step(precision: Precision, grad_clip: float | None):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with precision.autocast(torch.device("cpu")):
        out = model(torch.randn(16, 8))
    precision.scale(out.float().pow(2).mean()).backward()
    scaled = model.weight.grad.clone()
    optimizer_step(model, optimizer, grad_clip=grad_clip, precision=precision)
    return model, scaled


def test_fp16_step_unscales_before_clipping_and_matches_fp32():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    fp16, fp16_scaled = _linear_step(Precision(torch.float16, scaler), grad_clip=0.05)
    fp32, fp32_grad = _linear_step(FP32, grad_clip=0.05)
    assert fp16_scaled.abs().sum() > 100 * fp32_grad.abs().sum()  # the backward saw the scaled loss
    # Clipped at the true norm: the scaled norm would clip ~256x harder and barely move the weights.
    assert torch.allclose(fp16.weight, fp32.weight, atol=2e-3)
    assert scaler.get_scale() == 2.0 ** 8  # finite gradients: no back-off


def test_fp16_step_with_overflow_is_skipped_and_the_scale_backs_off():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)  # 2^24 x the gradient overflows fp16
    torch.manual_seed(0)
    before = torch.nn.Linear(8, 4).weight.detach().clone()
    model, _ = _linear_step(Precision(torch.float16, scaler), grad_clip=None)
    assert torch.equal(model.weight, before) and scaler.get_scale() == 2.0 ** 23


def test_accumulated_contrastive_step_in_fp16_matches_fp32():
    """The loss-scaled gradients fed into pass 2 come back unscaled: the update equals fp32's within fp16 error."""
    pixels, tokens = global_batch(6)
    weights = {}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)  # small enough that the first step does not overflow
    for name, precision in (("fp32", FP32), ("fp16", Precision(torch.float16, scaler))):
        model = tiny_model()
        optimizer = build_optimizer(model, OptimConfig(lr=1e-3, warmup_steps=0))
        accumulate_gradients(model, micro_batches(pixels, tokens, 2), precision)
        optimizer_step(model, optimizer, precision=precision)
        weights[name] = model.visual.trunk.patch_embed.proj.weight.detach().clone()
        assert precision.scaler is None or precision.scaler.get_scale() == 2.0 ** 10  # not skipped
    moved = (weights["fp32"] - tiny_model().visual.trunk.patch_embed.proj.weight).abs().mean()
    assert (weights["fp16"] - weights["fp32"]).abs().mean() < 0.1 * moved


def test_loss_scale_is_saved_with_the_training_state(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = build_scheduler(optimizer, 1, 10)
    written = Precision(torch.float16, torch.amp.GradScaler("cpu", init_scale=512.0))
    written.scale(torch.ones(1))  # the scaler makes its scale on first use
    written.scaler.update(new_scale=128.0)
    write_train_state(tmp_path, optimizer, scheduler, Progress(), [{"cpu": torch.get_rng_state(), "cuda": None}],
                      written)
    restored = Precision(torch.float16, torch.amp.GradScaler("cpu"))
    read_train_state(tmp_path, optimizer, scheduler, restored)
    assert restored.scaler.get_scale() == 128.0
