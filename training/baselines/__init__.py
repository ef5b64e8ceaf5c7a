"""Baselines: BM25 (no training) and the trained baselines as configurations of the one trainer."""

from training.baselines.bm25 import BM25Index
from training.baselines.methods import METHODS, MethodSpec

__all__ = ["METHODS", "BM25Index", "MethodSpec"]
