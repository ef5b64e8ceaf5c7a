"""Dual-encoder trainer: data grouping, towers (full or cached-bottom), loop, DDP helpers."""

from training.trainer.config import TrainConfig
from training.trainer.data import BatchSampler, TrainingSet, build_training_set, read_samples
from training.trainer.loop import TrainResult, train
from training.trainer.model import DualEncoder

__all__ = [
    "BatchSampler",
    "DualEncoder",
    "TrainConfig",
    "TrainResult",
    "TrainingSet",
    "build_training_set",
    "read_samples",
    "train",
]
