"""Chunked retrieval ranks against a brute-force N x N oracle (stable sort: ties go to the lower candidate index)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from biomedclip.evaluate.retrieval import first_occurrence, paired_ranks, rank_metrics, retrieval_metrics


def brute_force_ranks(images: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based position of each query's own pair in a stable descending sort of the full score matrix."""
    scores = images.astype(np.float64) @ texts.astype(np.float64).T
    n = len(scores)
    image_order = np.argsort(-scores, axis=1, kind="stable")
    text_order = np.argsort(-scores.T, axis=1, kind="stable")
    image_ranks = np.array([np.flatnonzero(image_order[i] == i)[0] + 1 for i in range(n)])
    text_ranks = np.array([np.flatnonzero(text_order[i] == i)[0] + 1 for i in range(n)])
    return image_ranks, text_ranks


def brute_force_recall(images: np.ndarray, texts: np.ndarray, k: int) -> float:
    """Recall@k the open_clip way: is the pair among the k best of the full matrix (same tie rule)."""
    scores = images.astype(np.float64) @ texts.astype(np.float64).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([i in top[i] for i in range(len(scores))]))


def integer_embeddings(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small integers: every dot product is exact in float32, so ties are real ties on every code path."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(n, dim)).astype(np.float32),
            rng.integers(-2, 3, size=(n, dim)).astype(np.float32))


@pytest.mark.parametrize("n, chunk_size", [(60, 1), (200, 7), (200, 64), (200, 200), (200, 1000)])
def test_ranks_equal_brute_force_with_many_ties(n, chunk_size):
    images, texts = integer_embeddings(n, 4, seed=1)
    scores = images @ texts.T
    assert any(len(np.unique(row)) < len(row) for row in scores)  # the data really holds ties
    ranks = paired_ranks(images, texts, chunk_size=chunk_size)
    expected_images, expected_texts = brute_force_ranks(images, texts)
    np.testing.assert_array_equal(ranks.image_to_text, expected_images)
    np.testing.assert_array_equal(ranks.text_to_image, expected_texts)


def test_duplicate_captions_tie_and_the_lower_index_wins():
    images, texts = integer_embeddings(60, 6, seed=2)
    texts[40] = texts[3]  # figures 3 and 40 carry the same caption
    texts[41] = texts[3]
    images[40] = texts[3] * 3  # image 40 points straight at its caption, which is also caption 3
    ranks = paired_ranks(images, texts, chunk_size=16)
    expected_images, expected_texts = brute_force_ranks(images, texts)
    np.testing.assert_array_equal(ranks.image_to_text, expected_images)
    np.testing.assert_array_equal(ranks.text_to_image, expected_texts)
    scores = images @ texts.T
    assert scores[40].max() == scores[40, 40] == scores[40, 3] == scores[40, 41]
    assert ranks.image_to_text[40] == 2  # caption 3 ties with its own and comes first; caption 41 comes after


def test_duplicate_images_tie_in_the_text_direction():
    images, texts = integer_embeddings(30, 5, seed=3)
    images[20] = images[5]
    texts[20] = images[5] * 2
    ranks = paired_ranks(images, texts, chunk_size=8)
    expected_images, expected_texts = brute_force_ranks(images, texts)
    np.testing.assert_array_equal(ranks.text_to_image, expected_texts)
    np.testing.assert_array_equal(ranks.image_to_text, expected_images)
    assert ranks.text_to_image[20] == 2


def test_unit_vectors_match_brute_force_recall_and_median():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(500, 32)).astype(np.float32)
    texts = (images + rng.normal(scale=1.2, size=images.shape)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    ranks = paired_ranks(images, texts, chunk_size=64)
    expected_images, expected_texts = brute_force_ranks(images, texts)
    np.testing.assert_array_equal(ranks.image_to_text, expected_images)
    np.testing.assert_array_equal(ranks.text_to_image, expected_texts)
    metrics = retrieval_metrics(ranks, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert metrics["image_to_text"][f"R@{k}"] == brute_force_recall(images, texts, k)
        assert metrics["text_to_image"][f"R@{k}"] == brute_force_recall(texts, images, k)
    assert 0 < metrics["image_to_text"]["R@1"] < metrics["image_to_text"]["R@10"] < 1
    assert metrics["image_to_text"]["median_rank"] == float(np.median(expected_images))
    assert metrics["n"] == 500


def test_rank_metrics_of_known_ranks():
    metrics = rank_metrics(np.array([1, 2, 6, 11]), ks=(1, 5, 10))
    assert metrics == {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75, "median_rank": 4.0, "mean_rank": 5.0}


def test_bad_inputs_are_refused():
    images, texts = integer_embeddings(10, 4, seed=5)
    with pytest.raises(ValueError, match="N x D"):
        paired_ranks(images, texts[:9])
    texts[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        paired_ranks(images, texts)


PEAK_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from biomedclip.evaluate.retrieval import paired_ranks
    n, chunk = int(sys.argv[1]), int(sys.argv[2])
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(n, 32), dim=1)
    texts = torch.nn.functional.normalize(images + torch.randn(n, 32), dim=1)
    paired_ranks(images[:10], texts[:10], chunk_size=chunk)  # warm up the kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ranks = paired_ranks(images, texts, chunk_size=chunk)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, int((ranks.image_to_text == 1).sum()))
""")


def test_peak_memory_is_bounded_by_the_chunk_not_by_n_squared():
    n, chunk = 8_000, 256
    # one thread: on a shared, oversubscribed machine OpenMP's spinning threads make this 30x slower
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(n), str(chunk)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, check=True, timeout=600)
    extra_bytes, top1 = map(int, result.stdout.split())
    full_matrix = n * n * 4
    assert extra_bytes < 12 * chunk * chunk + 64 * 2**20, extra_bytes  # ~9 bytes per block entry + O(N) + slack
    assert extra_bytes < full_matrix / 10
    assert top1 > 0


def test_validation_and_evaluation_agree_on_a_duplicated_caption():
    """A perfect model on 6 pairs whose captions 1 and 4 are the same text: by the tie rule, image 4's own caption
    ranks behind caption 1 (R@1 5/6 per direction), in training's validation and in the evaluation report alike.
    The duplicate's embedding differs in the last bits (as when embedded in another batch): equal tokens tie anyway."""
    from biomedclip.train.metrics import retrieval_metrics as validation_metrics

    rng = np.random.default_rng(3)
    texts = rng.normal(size=(6, 16)).astype(np.float32)
    texts[4] = texts[1]
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    images = texts.copy()
    texts[4] = np.nextafter(texts[4], np.float32(1))
    tokens = torch.arange(6)[:, None].repeat(1, 8)
    tokens[4] = tokens[1]

    validation = validation_metrics(torch.from_numpy(images), torch.from_numpy(texts), tokens)
    dedup = texts[first_occurrence([row.tobytes() for row in tokens.numpy()])]
    report = retrieval_metrics(paired_ranks(images, dedup), ks=(1, 5, 10))
    oracle_i2t, oracle_t2i = brute_force_ranks(images, dedup)
    assert validation["val/i2t_R@1"] == report["image_to_text"]["R@1"] == np.mean(oracle_i2t <= 1) == 5 / 6
    assert validation["val/t2i_R@1"] == report["text_to_image"]["R@1"] == np.mean(oracle_t2i <= 1) == 5 / 6
    assert validation["val/i2t_R@5"] == report["image_to_text"]["R@5"] == 1.0
