"""The pretraining loss terms, declared once: name, what normalises them, weight, how to measure them.

Every term of a step is a sum over the global batch divided by one count of that batch — its masked
tokens (MLM, logit KL), its tokens (hidden-state and pooled cosines) or its micro-batches over all ranks
(the routers' auxiliary losses, one value per micro-batch) — and enters the optimised loss with its weight:

    loss = Σ_term weight · (Σ_micro-batches, ranks value) / count(normaliser)

``Trainer.step`` backpropagates each micro-batch's share (its values × weight × world / count: FSDP
averages the gradients over ranks), adds the values to the step's device-side sums, and after the one
all-reduce writes each term's sum / count under its name in metrics.jsonl; the console line shows the
terms with a ``console`` label. So a new term is one entry in ``declare`` (a test adds a dummy one).
Terms with weight 0 are measured and logged only (MLM accuracy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from config_check import ConfigError
from model.config import ModelConfig
from model.losses import aux_coefficients, weighted_aux
from model.modernalbert import MaskedLMOutput
from pretrain.distill import Teacher, hidden_cosine_sum, kl_sum, pooled_cosine_sum, relation_kl_sum, teacher_ids

NORMALISERS = ("masked", "tokens", "micro_batches")


@dataclass
class MicroBatch:
    """What a term reads: the model's inputs and outputs for one micro-batch, and the teacher's (run once, lazily)."""

    inputs: dict
    out: MaskedLMOutput
    teacher: Teacher | None = None
    teacher_input: str = "clean"
    _teacher_out: tuple | None = field(default=None, repr=False)

    def teacher_outputs(self) -> tuple:
        """(hidden states at the mapped layers, masked-token logits or None, pooled embeddings or None)."""
        if self._teacher_out is None:
            assert self.teacher is not None, "a distillation term without a teacher"
            i = self.inputs
            self._teacher_out = self.teacher.run(
                teacher_ids(i, self.teacher_input), i["cu_seqlens"], i["mlm_positions"]
            )
        return self._teacher_out


@dataclass(frozen=True)
class LossTerm:
    name: str  # its key in metrics.jsonl
    normaliser: str  # one of NORMALISERS: the global count its sum is divided by
    weight: float  # in the optimised loss; 0: measured and logged only
    value: Callable[[MicroBatch], torch.Tensor]  # this micro-batch's sum (micro_batches: its one value)
    console: str = ""  # label on the console line ("": metrics.jsonl only)
    digits: int = 4  # decimals on the console line

    def __post_init__(self) -> None:
        if self.normaliser not in NORMALISERS:
            raise ConfigError(
                f"loss term {self.name!r}: normaliser {self.normaliser!r}: allowed: {', '.join(NORMALISERS)}"
            )


def _aux(name: str) -> Callable[[MicroBatch], torch.Tensor]:
    def value(mb: MicroBatch) -> torch.Tensor:
        return mb.out.aux_losses[name]

    return value


def _pooled(mb: MicroBatch) -> torch.Tensor:
    assert mb.out.last_hidden_state is not None, "the student runs with output_hidden_states when distilling"
    return pooled_cosine_sum(mb.out.last_hidden_state, mb.teacher_outputs()[2], mb.inputs["cu_seqlens"])


def _relation(teacher: Teacher) -> Callable[[MicroBatch], torch.Tensor]:
    def value(mb: MicroBatch) -> torch.Tensor:
        assert mb.out.qkv_states, "the student runs with output_qkv when distilling relations"
        qkv = mb.teacher_outputs()[3]
        return relation_kl_sum(mb.out.qkv_states[-1], qkv, mb.inputs["cu_seqlens"], teacher.relation_heads)

    return value


def declare(cfg, teacher=None) -> list[LossTerm]:
    """The terms of a run (``cfg``: pretrain.config.RunConfig; ``teacher``: pretrain.distill.Teacher or None)."""
    mlm_weight = cfg.distill.mlm_weight if teacher is not None else 1.0  # logged at any weight
    terms = [
        LossTerm("loss", "masked", mlm_weight, lambda mb: mb.out.mlm_loss * mb.out.num_masked, "loss"),
        LossTerm("mlm_accuracy", "masked", 0.0, lambda mb: mb.out.mlm_accuracy * mb.out.num_masked, "acc", 3),
    ]
    terms += [
        LossTerm(f"aux/{name}", "micro_batches", coef, _aux(name)) for name, coef in aux_coefficients(cfg.model).items()
    ]
    if teacher is not None:
        d = cfg.distill
        terms.append(
            LossTerm(
                "distill/hidden",
                "tokens",
                d.hidden_weight,
                lambda mb: hidden_cosine_sum(mb.out.hidden_states, mb.teacher_outputs()[0]),
                "distill hid",
            )
        )
        if d.pooled_weight > 0:
            terms.append(LossTerm("distill/pooled", "tokens", d.pooled_weight, _pooled, "pooled"))
        if d.relation_weight > 0:
            terms.append(LossTerm("distill/relation", "tokens", d.relation_weight, _relation(teacher), "rel"))
        if teacher.kl_on:
            terms.append(
                LossTerm(
                    "distill/kl",
                    "masked",
                    d.kl_weight,
                    lambda mb: kl_sum(mb.out.logits, mb.teacher_outputs()[1], d.temperature),
                    "kl",
                )
            )
    return terms


def aux_loss(cfg: ModelConfig, record: dict) -> float:
    """The weighted auxiliary losses of a record (its "aux_loss" field): ``model.losses.weighted_aux``, the
    weighing fine-tuning uses too, over the record's ``aux/<name>`` fields."""
    return float(weighted_aux(cfg, {k.removeprefix("aux/"): v for k, v in record.items() if k.startswith("aux/")}))


def console_fields(terms: list[LossTerm]) -> tuple[tuple[str, str, int], ...]:
    """(record key, label, digits) of the terms the console line shows, in declaration order."""
    return tuple((t.name, t.console, t.digits) for t in terms if t.console)
