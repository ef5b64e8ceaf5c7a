"""Contrastive losses over a batch score matrix: H-InfoNCE (level-aware) and plain InfoNCE."""

from training.losses.hinfonce import IGNORE, hinfonce_loss
from training.losses.infonce import infonce_loss

__all__ = ["IGNORE", "hinfonce_loss", "infonce_loss"]
