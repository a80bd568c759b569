"""The sequence classification / regression head, shared by fine-tuning, the GLUE runner and the HF classes.

One head everywhere, so a model fine-tuned here exports with its head (``tools/convert_to_hf.py``) and
``AutoModelForSequenceClassification`` computes the same logits:

    pooled = pool(h_TD)                      # [CLS] state, or the mean over the example's tokens
    logits = out(dropout(norm(gelu(dense(pooled)))))

``dense`` and ``norm`` carry no bias (like every layer of the encoder); ``out`` has one. This is
ModernBERT's ``ModernBertForSequenceClassification`` head with ``classifier_bias=False`` and
``norm_bias=False``, so a folded model also exports to the stock class with its head. ``num_labels == 1``
is a regression head (trained with MSE, e.g. STS-B).

Shapes: T tokens (flat, unpadded), B examples, D hidden, C labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from config_check import check
from model.config import ModelConfig
from model.modernalbert import ModernAlbertModel

POOLINGS = ("cls", "mean")


@dataclass
class ClassifierConfig:
    """What a classification head needs beyond the encoder config; stored in the native config.json."""

    num_labels: int = 2  # 1: regression
    pooling: str = "mean"  # cls | mean
    dropout: float = 0.0
    labels: list[str] = field(default_factory=list)  # names of the classes (empty for regression)

    def validate(self, prefix: str = "classifier.") -> "ClassifierConfig":
        check(self.num_labels >= 1, f"{prefix}num_labels", self.num_labels, "must be >= 1 (1 = regression)")
        check(self.pooling in POOLINGS, f"{prefix}pooling", self.pooling, f"allowed: {', '.join(POOLINGS)}")
        check(0 <= self.dropout < 1, f"{prefix}dropout", self.dropout, "must be in [0, 1)")
        check(
            not self.labels or len(self.labels) == self.num_labels,
            f"{prefix}labels",
            self.labels,
            f"{len(self.labels)} names for num_labels={self.num_labels}",
        )
        return self

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


def pool(h_TD: torch.Tensor, cu_seqlens: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per example [B, D] from the flat hidden states of B examples."""
    cu = cu_seqlens.long()
    if how == "cls":
        return h_TD[cu[:-1]]
    lens_B = cu[1:] - cu[:-1]
    ex_T = torch.repeat_interleave(torch.arange(len(lens_B), device=h_TD.device), lens_B, output_size=h_TD.shape[0])
    return h_TD.new_zeros(len(lens_B), h_TD.shape[1]).index_add_(0, ex_T, h_TD) / lens_B[:, None].to(h_TD.dtype)


class ClassificationHead(nn.Module):
    """dense d→d (no bias) → GELU → LayerNorm (no bias) → dropout → linear d→C (with bias), on pooled states."""

    def __init__(self, hidden_size: int, num_labels: int, norm_eps: float = 1e-5, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=False)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def init_weights(self, std: float) -> None:
        nn.init.trunc_normal_(self.dense.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.trunc_normal_(self.out.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.out.bias)
        nn.init.ones_(self.norm.weight)

    def forward(self, pooled_BD: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.norm(F.gelu(self.dense(pooled_BD)))))


def classification_loss(logits_BC: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classes, MSE for a one-output regression head (in fp32)."""
    if logits_BC.shape[-1] == 1:
        return F.mse_loss(logits_BC.squeeze(-1).float(), labels_B.float())
    return F.cross_entropy(logits_BC.float(), labels_B.long())


class ModernAlbertForSequenceClassification(nn.Module):
    """Encoder + ``ClassificationHead``; ``forward`` takes the unpadded batch and returns logits [B, C].

    State-dict keys: ``model.*`` (the encoder, as in ``ModernAlbertForMaskedLM``) and ``classifier.*``.
    """

    def __init__(self, cfg: ModelConfig, head: ClassifierConfig) -> None:
        super().__init__()
        self.cfg, self.head_cfg = cfg.validate(), head.validate()
        self.model = ModernAlbertModel(cfg)
        self.classifier = ClassificationHead(cfg.hidden_size, head.num_labels, cfg.norm_eps, head.dropout)
        self.classifier.init_weights(cfg.init_std)

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        h_TD, _ = self.model(input_ids, cu_seqlens, max_seqlen)
        return self.classifier(pool(h_TD, cu_seqlens, self.head_cfg.pooling))
