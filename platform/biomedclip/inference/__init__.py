"""The one inference path (preprocess -> embed -> prompt ensemble -> logit scale) that evaluation, Serve, VQA and
indexing share. Knows no Ray."""
from biomedclip.inference.predictor import Predictor, fill_template, rank_labels

__all__ = ["Predictor", "fill_template", "rank_labels"]
