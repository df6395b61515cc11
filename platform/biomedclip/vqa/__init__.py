"""Medical VQA on BiomedCLIP: a co-attention fusion model, VQA-RAD/SLAKE loaders, fine-tuning, serving artifact."""
from biomedclip.vqa.answers import AnswerVocab, is_closed_answer, normalize_answer
from biomedclip.vqa.artifact import VQAPredictor, load_vqa_artifact, load_vqa_predictor, save_vqa_artifact
from biomedclip.vqa.datasets import LoadProblem, LoadResult, VQARecord, load_slake, load_vqa_dataset, load_vqa_rad
from biomedclip.vqa.metrics import AccuracyCounts, accuracy_counts
from biomedclip.vqa.model import FusionConfig, VQAModel

__all__ = [
    "AccuracyCounts", "AnswerVocab", "FusionConfig", "LoadProblem", "LoadResult", "VQAModel", "VQAPredictor",
    "VQARecord", "accuracy_counts", "is_closed_answer", "load_slake", "load_vqa_artifact", "load_vqa_dataset",
    "load_vqa_predictor", "load_vqa_rad", "normalize_answer", "save_vqa_artifact",
]
