"""Trainer configuration (one dataclass; the experiment's budgets are instances of it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.samples import POSITIVE_LEVEL


@dataclass
class TrainConfig:
    loss: str = "hinfonce"  # hinfonce | infonce (positives = level >= pos_level, the rest negatives)
    temperature: float = 0.05
    steps: int = 200
    batch_queries: int = 32
    docs_per_query: int = 8
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 10
    seed: int = 0
    n_train_layers: int = 0  # 0: full fine-tuning; k: train the top k layers over cached lower states
    adapter: bool = False  # frozen encoder + a trainable linear map per tower (cheapest CPU recipe)
    shared_towers: bool = True
    max_query_tokens: int = 16
    max_doc_tokens: int = 32
    pos_level: int = POSITIVE_LEVEL
    term_min_level: int = 1  # H-InfoNCE: levels below this are only negatives (1 = the paper's loss)
    hard_negatives: str = "none"  # none | bm25 | ance
    n_hard: int = 20  # hard-negative candidates kept per query
    ance_refresh: int = 100  # steps between ANCE index refreshes
    # docs per query: quota (level_quota per level; the default) | stratified (round-robin over
    # levels, the old draw) | uniform
    sampling: str = "quota"
    level_quota: str = "5:1,4:3,3:2,2:1,1:1"  # level:docs per query (0 = hard negatives)
    batch_labels: str = "own"  # own: the paper's HLA batch | inherit: the old batch (an ablation)
    clip_norm: float = 1.0  # gradient clipping (the measured norm before clipping is logged)
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        from core.errors import CropsError, ErrorKind

        if self.loss not in ("hinfonce", "infonce"):
            raise CropsError(ErrorKind.INVALID_INPUT, f"loss must be hinfonce or infonce, got {self.loss!r}")
        if self.hard_negatives not in ("none", "bm25", "ance"):
            raise CropsError(
                ErrorKind.INVALID_INPUT,
                f"hard_negatives must be none, bm25 or ance, got {self.hard_negatives!r}",
            )
        if self.sampling not in ("quota", "stratified", "uniform"):
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"sampling must be quota, stratified or uniform, got {self.sampling!r}"
            )
        from training.trainer.data import BATCH_LABELS, parse_quota

        parse_quota(self.level_quota)
        if self.batch_labels not in BATCH_LABELS:
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"batch_labels must be own or inherit, got {self.batch_labels!r}"
            )
        if self.clip_norm <= 0:
            raise CropsError(ErrorKind.INVALID_INPUT, "clip_norm must be positive")
        if self.steps < 1 or self.temperature <= 0 or self.lr <= 0:
            raise CropsError(ErrorKind.INVALID_INPUT, "steps, temperature and lr must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"device must be auto, cpu or cuda, got {self.device!r}"
            )
