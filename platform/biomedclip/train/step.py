"""One contrastive step over W workers x k micro-batches whose gradient equals one step on the whole global batch.

Pass 1 encodes every micro-batch: the first with gradient, keeping its graph, the others without (remembering each
one's RNG state). The features of all workers are gathered and the loss is computed once, on leaf copies, which
yields the gradient of every gathered feature and of the temperature. A feature's gradient has terms from every
worker's rows, so the feature gradients are summed across workers and each worker keeps its own slice. Pass 2
back-propagates the slice: through the kept graph for the first micro-batch, and for the others by re-encoding each
with gradient, replaying its RNG state (so patch dropout drops the same patches); DDP syncs only on the last one.
So k micro-batches cost 2k - 1 forwards and k backwards, and a single micro-batch is a plain one-pass step.

Scale: each worker's loss is the mean over its rows and the global loss is the mean over workers, so the summed
feature gradient is W x the global one; DDP's averaging divides by W again. The temperature's gradient is fed into
the last micro-batch's backward through the forward's `logit_scale` output, so DDP averages it with the rest.
In fp16 the gradients fed into pass 2 are multiplied by the loss scale, as a scaled loss's backward would give.

Torch only (no Ray): the loop, the tests and the GPU benchmark share it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from biomedclip.train.loss import local_logits, symmetric_cross_entropy, world

MicroBatch = tuple[torch.Tensor, torch.Tensor]  # (pixels [m,3,H,W], token_ids [m,L])


PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # the choices a config offers (train.precision)


def resolve_precision(requested: str, device_type: str, bf16_supported: bool) -> str:
    """The precision to train in. `auto`: bf16 on GPUs that have it, else fp16 (with loss scaling: V100s have no
    bf16); fp32 on CPU, where mixed precision rarely pays. `bf16`, `fp16` and `fp32` are taken as asked, except bf16
    on a GPU without it."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {list(PRECISIONS)}")
    if device_type == "cuda" and not bf16_supported and requested == "bf16":
        raise ValueError("precision bf16: this GPU has no bf16 (V100s do not); use auto (fp16 with loss scaling) "
                         "or fp32")
    if requested != "auto":
        return requested
    if device_type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


@dataclass(frozen=True)
class Precision:
    """Autocast to `dtype` (None: fp32). fp16 carries a GradScaler: its small gradients would underflow unscaled,
    so losses (and gradients fed into backward) are multiplied by the scale, and the update unscales them first."""
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def for_device(cls, requested: str, device: torch.device) -> Precision:
        bf16_supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        name = resolve_precision(requested, device.type, bf16_supported)
        if name == "fp16":
            return cls(torch.float16, torch.amp.GradScaler(device.type))
        return cls(torch.bfloat16 if name == "bf16" else None)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device):
        if self.dtype is None:  # a disabled torch.autocast still costs ~0.4 ms to enter, per micro-batch and pass
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)

    def scale(self, tensor: torch.Tensor) -> torch.Tensor:
        """A loss, or a gradient to back-propagate, multiplied by the loss scale (unchanged without a scaler)."""
        return tensor if self.scaler is None else self.scaler.scale(tensor)

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restores the loss scale; a checkpoint from another precision (a GPU type without bf16) has none."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


FP32 = Precision()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _gather(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _sum_across_workers(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def accumulate_gradients(model: nn.Module, micro_batches: list[MicroBatch], precision: Precision = FP32) -> float:
    """Adds the global-batch gradient to `.grad` of every parameter; returns the global-batch loss.

    `model` is the BiomedCLIP, wrapped in DistributedDataParallel when several workers train. Every worker passes
    micro-batches of the same sizes. Call `optimizer.zero_grad()` before and the optimizer step after.
    """
    rank, world_size = world()
    if world_size > 1 and not isinstance(model, DistributedDataParallel):
        raise ValueError("accumulate_gradients: with several workers the model must be wrapped in "
                         "DistributedDataParallel")
    device = next(model.parameters()).device
    bare = unwrap(model)

    with _sync_unless(len(micro_batches) > 1, model), precision.autocast(device):
        kept = model(*micro_batches[0])  # the graph that pass 2 back-propagates without re-encoding
    outputs, rng_states = [kept], [None]
    for pixels, token_ids in micro_batches[1:]:
        rng_states.append(_rng_state(device))
        with torch.no_grad(), precision.autocast(device):
            outputs.append(bare(pixels, token_ids))
    rng_after_pass_1 = _rng_state(device)
    image_parts = [out["image_features"].detach().float() for out in outputs]
    text_parts = [out["text_features"].detach().float() for out in outputs]

    local_images, local_texts = torch.cat(image_parts), torch.cat(text_parts)
    all_images = _gather(local_images, world_size).requires_grad_()
    all_texts = _gather(local_texts, world_size).requires_grad_()
    scale = bare.logit_scale.detach().exp().requires_grad_()
    rows = slice(rank * len(local_images), (rank + 1) * len(local_images))
    logits_per_image, logits_per_text = local_logits(all_images[rows], all_texts[rows], scale, all_images, all_texts)
    loss = symmetric_cross_entropy(logits_per_image, logits_per_text, offset=rows.start)
    loss.backward()

    feature_grads = _sum_across_workers(torch.cat([all_images.grad, all_texts.grad], dim=1), world_size)[rows]
    image_grads, text_grads = feature_grads.split(local_images.shape[1], dim=1)
    sizes = [len(part) for part in image_parts]
    _backward_micro_batches(model, micro_batches, kept, rng_states, image_grads.split(sizes), text_grads.split(sizes),
                            scale.grad, precision, device)
    _set_rng_state(rng_after_pass_1, device)
    return _sum_across_workers(loss.detach(), world_size).item() / world_size


def _sync_unless(skip_sync: bool, model: nn.Module):
    """DDP's no_sync for every micro-batch but the last (gradients sync once, on the last backward)."""
    return model.no_sync() if skip_sync and isinstance(model, DistributedDataParallel) else contextlib.nullcontext()


def _backward_micro_batches(model, micro_batches, kept, rng_states, image_grads, text_grads, scale_grad, precision,
                            device):
    """Micro-batch 0 back-propagates the graph kept from pass 1; the others are re-encoded replaying their RNG."""
    last = len(micro_batches) - 1
    for index, ((pixels, token_ids), state) in enumerate(zip(micro_batches, rng_states)):
        with _sync_unless(index != last, model):
            if index:
                _set_rng_state(state, device)
                with precision.autocast(device):
                    out = model(pixels, token_ids)
            else:
                out = kept
            tensors = [out["image_features"], out["text_features"]]
            # scaled (fp16: loss scaling) before the cast, so small fp32 gradients do not underflow in fp16
            grads = [precision.scale(image_grads[index]).to(tensors[0].dtype),
                     precision.scale(text_grads[index]).to(tensors[1].dtype)]
            if index == last:
                tensors.append(out["logit_scale"])
                grads.append(precision.scale(scale_grad).to(out["logit_scale"].dtype))
            trained = [(tensor, grad) for tensor, grad in zip(tensors, grads) if tensor.requires_grad]  # frozen towers
            torch.autograd.backward(*zip(*trained))


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None, grad_clip: float | None = None,
                   precision: Precision = FP32) -> None:
    """Unscales (fp16), clips (optional), steps the optimizer and the schedule, clears gradients. With fp16 the
    scaler skips the step when a gradient overflowed, and lowers the scale."""
    scaler = precision.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)  # clipping compares the true gradient norm
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def apply_update(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None, grad_clip: float | None = None,
                 precision: Precision = FP32) -> None:
    """`optimizer_step`, then clamps the temperature."""
    optimizer_step(model, optimizer, scheduler, grad_clip, precision)
    unwrap(model).clamp_logit_scale()
