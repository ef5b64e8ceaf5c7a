"""Trainer configuration (one dataclass; the experiment's budgets are instances of it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    pos_level: int = 4
    term_min_level: int = 1  # H-InfoNCE: levels below this are only negatives (1 = the paper's loss)
    hard_negatives: str = "none"  # none | bm25 | ance
    n_hard: int = 20  # hard-negative candidates kept per query
    ance_refresh: int = 100  # steps between ANCE index refreshes
    sampling: str = "stratified"  # stratified: docs per query round-robin over levels | uniform
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda
    extra: dict[str, Any] = field(default_factory=dict)

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
        if self.sampling not in ("stratified", "uniform"):
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"sampling must be stratified or uniform, got {self.sampling!r}"
            )
        if self.steps < 1 or self.temperature <= 0 or self.lr <= 0:
            raise CropsError(ErrorKind.INVALID_INPUT, "steps, temperature and lr must be positive")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"device must be auto, cpu or cuda, got {self.device!r}"
            )
