"""The accumulated step: W=2 gloo workers x k=3 micro-batches give the gradient of one step on the global batch."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model
from biomedclip.model.text_tower import trim_padding
from biomedclip.train.loss import contrastive_loss
from biomedclip.train.step import accumulate_gradients, apply_update
from tests.conftest import free_port

WORLD, K, MICRO = 2, 3, 2
GLOBAL = WORLD * K * MICRO


def tiny_config(patch_dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(embed_dim=32, vision=VisionConfig("vit-tiny", 224, patch_dropout),
                       text=TextConfig("bert-tiny", 77, vocab_size=300))


def tiny_model(patch_dropout: float = 0.0):
    """Patch dropout on: training mode (BERT's dropout too); off: eval mode, so no layer draws random numbers."""
    torch.manual_seed(0)
    model = build_model(tiny_config(patch_dropout))
    return model.train(patch_dropout > 0)


def global_batch(n: int = GLOBAL) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(n, 3, 224, 224, generator=gen)
    tokens = torch.randint(5, 300, (n, 77), generator=gen)
    lengths = torch.randint(4, 40, (n,), generator=gen)
    tokens[torch.arange(77)[None, :] >= lengths[:, None]] = 0  # padding after each caption
    tokens[:, 0] = 2
    return pixels, tokens


def grads_of(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def micro_batches(pixels, tokens, k):
    return list(zip(pixels.chunk(k), tokens.chunk(k)))


def _worker(rank: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = DistributedDataParallel(tiny_model())
        pixels, tokens = global_batch()
        rows = slice(rank * K * MICRO, (rank + 1) * K * MICRO)
        loss = accumulate_gradients(model, micro_batches(pixels[rows], tokens[rows], K))
        if rank == 0:
            torch.save({"loss": loss, "grads": grads_of(model.module)}, out_path)
    finally:
        dist.destroy_process_group()


def test_two_workers_three_micro_batches_equal_one_full_batch_step(tmp_path):
    out = tmp_path / "grads.pt"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    distributed = torch.load(out)

    model = tiny_model()
    pixels, tokens = global_batch()
    out_ref = model(pixels, tokens)
    reference_loss = contrastive_loss(out_ref["image_features"], out_ref["text_features"], out_ref["logit_scale"])
    reference_loss.backward()
    reference = grads_of(model)

    assert distributed["loss"] == pytest.approx(reference_loss.item(), abs=1e-6)
    diffs = {name: (distributed["grads"][name] - g).abs().max().item() for name, g in reference.items()}
    worst = max(diffs, key=diffs.get)
    print(f"max |grad diff| = {diffs[worst]:.2e} ({worst})")
    assert diffs[worst] < 1e-5, worst
    assert reference["logit_scale"].abs().item() > 0 and reference["visual.head.proj.weight"].abs().max() > 1e-4


def test_per_micro_batch_loss_differs_from_the_global_batch(tmp_path):
    """The test above can fail: accumulating k local losses (fewer negatives) gives another gradient."""
    pixels, tokens = global_batch()
    exact = tiny_model()
    accumulate_gradients(exact, micro_batches(pixels, tokens, K))
    naive = tiny_model()
    for pix, tok in micro_batches(pixels, tokens, K):
        out = naive(pix, tok)
        (contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"]) / K).backward()
    diff = max((a - b).abs().max().item() for a, b in zip(grads_of(exact).values(), grads_of(naive).values()))
    assert diff > 1e-4


def test_patch_dropout_masks_are_replayed_in_the_gradient_pass():
    """With dropout on, pass 2 must see pass 1's masks: equal to a one-pass step drawing masks in the same order."""
    pixels, tokens = global_batch()
    torch.manual_seed(7)
    accumulated = tiny_model(patch_dropout=0.5)
    torch.manual_seed(7)
    accumulate_gradients(accumulated, micro_batches(pixels, tokens, K))
    rng_after_accumulation = torch.get_rng_state()

    one_pass = tiny_model(patch_dropout=0.5)
    torch.manual_seed(7)
    outs = [one_pass(pix, tok) for pix, tok in micro_batches(pixels, tokens, K)]
    loss = contrastive_loss(torch.cat([o["image_features"] for o in outs]),
                            torch.cat([o["text_features"] for o in outs]), outs[0]["logit_scale"])
    loss.backward()

    diff = max((a - b).abs().max().item() for a, b in zip(grads_of(accumulated).values(), grads_of(one_pass).values()))
    assert diff < 1e-5
    assert torch.equal(rng_after_accumulation, torch.get_rng_state())  # the replay leaves the RNG where pass 1 did

    torch.manual_seed(8)  # other masks give another gradient: the comparison is sensitive to the masks
    other = tiny_model(patch_dropout=0.5)
    torch.manual_seed(8)
    accumulate_gradients(other, micro_batches(pixels, tokens, K))
    assert max((a - b).abs().max().item() for a, b in zip(grads_of(other).values(), grads_of(one_pass).values())) > 1e-4


def test_update_clamps_the_temperature():
    model = tiny_model()
    pixels, tokens = global_batch(4)
    accumulate_gradients(model, [(pixels, tokens)])
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    apply_update(model, optimizer, grad_clip=1.0)
    assert model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(100.0)).item())
    assert all(p.grad is None for p in model.parameters())


def test_micro_batches_of_very_different_caption_lengths_keep_the_step_exact():
    """Each micro-batch is cut to its own longest caption (8, 40 and 77 tokens here); the accumulated gradient still
    equals one step on the whole global batch encoded at full length."""
    gen = torch.Generator().manual_seed(2)
    pixels = torch.randn(3 * MICRO, 3, 224, 224, generator=gen)
    lengths = [3, 6, 30, 37, 77, 70]
    tokens = torch.randint(5, 300, (3 * MICRO, 77), generator=gen)
    tokens[torch.arange(77)[None, :] >= torch.tensor(lengths)[:, None]] = 0
    tokens[:, 0] = 2
    micro = micro_batches(pixels, tokens, 3)
    assert [trim_padding(t, 0).shape[1] for _, t in micro] == [8, 40, 77]

    accumulated = tiny_model()
    loss = accumulate_gradients(accumulated, micro)

    full_length = tiny_model()
    full_length.text.dynamic_padding = False
    out = full_length(pixels, tokens)
    reference_loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
    reference_loss.backward()
    assert loss == pytest.approx(reference_loss.item(), abs=1e-6)
    diff = max((a - b).abs().max().item() for a, b in zip(grads_of(accumulated).values(),
                                                          grads_of(full_length).values()))
    assert diff < 1e-5
    assert full_length.text.transformer.embeddings.word_embeddings.weight.grad.abs().max() > 1e-4


@pytest.mark.parametrize(("k", "forwards"), [(1, 1), (3, 5)])
def test_the_first_micro_batch_is_encoded_once(k, forwards):
    """Its pass-1 graph is back-propagated in pass 2: k micro-batches cost 2k - 1 forwards, one is a plain step."""
    model = tiny_model()
    calls = []
    model.text.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    pixels, tokens = global_batch(6)
    accumulate_gradients(model, micro_batches(pixels, tokens, k))
    assert len(calls) == forwards
