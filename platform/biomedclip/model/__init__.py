"""The BiomedCLIP model: towers, presets, preprocessing and checkpoint I/O. Knows nothing about Ray."""
from biomedclip.model.checkpoint import CheckpointError, load_model, load_weights, read_state_dict, save_checkpoint
from biomedclip.model.clip import BiomedCLIP, build_model, count_parameters
from biomedclip.model.config import ModelConfig, TextConfig, VisionConfig
from biomedclip.model.transforms import eval_transform, train_transform

__all__ = [
    "BiomedCLIP", "CheckpointError", "ModelConfig", "TextConfig", "VisionConfig", "build_model", "count_parameters",
    "eval_transform", "load_model", "load_weights", "read_state_dict", "save_checkpoint", "train_transform",
]
