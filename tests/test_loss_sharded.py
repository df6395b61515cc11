"""The sharded contrastive loss: W real gloo processes give the full-batch gradient."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from biomedclip.model import build_model
from biomedclip.text import Tokenizer
from biomedclip.train.loss import contrastive_loss, gather_features, local_logits
from tests.conftest import free_port
from tests.helpers import tiny_config, train_tokenizer

GLOBAL_BATCH = 8
CAPTIONS = [f"figure {i}: a {c} {s} in a {m}" for i, (c, s, m) in enumerate(
    zip(["red", "green", "blue", "grey"] * 2, ["circle", "square", "nodule", "cell"] * 2, ["radiograph", "stain"] * 4))]


def make_problem(tokenizer_dir: str):
    """The same model and global batch in every process (seeded; the vocabulary trained once, then loaded)."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(tokenizer_dir, context_length=77)
    model = build_model(tiny_config(tokenizer))
    pixels = torch.randn(GLOBAL_BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return model, pixels, tokenizer(CAPTIONS)


def full_batch_gradients(tokenizer_dir: str) -> dict[str, torch.Tensor]:
    model, pixels, tokens = make_problem(tokenizer_dir)
    model.eval()  # no dropout anywhere, so every process computes the same function
    out = model(pixels, tokens)
    contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"], rank=0).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def sharded_worker(rank: int, world_size: int, port: int, out_dir: str, tokenizer_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model, pixels, tokens = make_problem(tokenizer_dir)
        model.eval()
        local = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
        out = model(pixels[local], tokens[local])
        loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        for p in model.parameters():  # what DDP does: average the gradients over workers
            dist.all_reduce(p.grad)
            p.grad /= world_size
        with torch.no_grad():
            logits, _ = local_logits(out["image_features"], out["text_features"], out["logit_scale"],
                                     gather_features(out["image_features"]), gather_features(out["text_features"]))
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters()}, "logits_shape": tuple(logits.shape)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return str(train_tokenizer(CAPTIONS * 3).save(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def reference(tokenizer_dir):
    return full_batch_gradients(tokenizer_dir)


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_gradient_equals_full_batch(world_size, reference, tokenizer_dir, tmp_path):
    mp.spawn(sharded_worker, args=(world_size, free_port(), str(tmp_path), tokenizer_dir), nprocs=world_size)
    for rank in range(world_size):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["logits_shape"] == (GLOBAL_BATCH // world_size, GLOBAL_BATCH)
        assert set(result["grads"]) == set(reference)
        for name, grad in result["grads"].items():
            assert torch.allclose(grad, reference[name], atol=1e-5, rtol=0), (rank, name)
    assert reference["logit_scale"].abs().item() > 0


def test_single_process_loss_is_symmetric_infonce():
    image = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * image @ text.T
    expected = (torch.nn.functional.cross_entropy(logits, torch.arange(5))
                + torch.nn.functional.cross_entropy(logits.T, torch.arange(5))) / 2
    assert torch.allclose(contrastive_loss(image, text, scale), expected)
