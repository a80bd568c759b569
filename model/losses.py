"""How a model's loss parts become the one scalar that is optimised.

The models return their parts — the task loss (MLM, classification) and the unscaled auxiliary
losses of the routed modules (``MaskedLMOutput.aux_losses``) — and this module alone weighs them:

    total = task_scale · task + aux_scale · Σ_name coef_name · aux_name + Σ extra_scale · extra

with ``coef`` = ``mol.aux_loss_coef`` (Switch load balancing), ``mol.z_loss_coef`` (router z-loss) and 1
for LoRA-Mixer's routing specialisation loss (which carries its own α and λ). The scales let a
training loop turn a micro-batch's mean into its share of a global-batch mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from model.config import ModelConfig


def aux_coefficients(cfg: ModelConfig) -> dict[str, float]:
    """The auxiliary losses a model of ``cfg`` returns, with their weights: the one list of their names.

    (``attn_route_ce``, returned only when routing targets are given, is weighed by the fine-tuning loop.)
    """
    coefs: dict[str, float] = {}
    if cfg.mol.groups:
        coefs.update(mol_load_balance=cfg.mol.aux_loss_coef, mol_z=cfg.mol.z_loss_coef)
    if cfg.attn_experts.groups:
        coefs["attn_rsl"] = 1.0
    return coefs


def weighted_aux(cfg: ModelConfig, aux: Mapping[str, torch.Tensor | float]) -> torch.Tensor | float:
    """Σ coef·aux over the auxiliary losses present (0.0 when there are none); tensors or plain sums."""
    coefs = aux_coefficients(cfg)
    unknown = set(aux) - set(coefs)
    if unknown:
        raise ValueError(
            f"auxiliary losses {sorted(unknown)}: not among this model's ({sorted(coefs)}; "
            "model/losses.py: aux_coefficients)"
        )
    return sum((coefs[name] * value for name, value in aux.items()), 0.0)


def combine_losses(
    cfg: ModelConfig,
    task: torch.Tensor,
    aux: dict[str, torch.Tensor],
    *,
    task_scale: float = 1.0,
    aux_scale: float = 1.0,
    extra: Iterable[tuple[torch.Tensor, float]] = (),
) -> torch.Tensor:
    """The scalar to call ``backward`` on (see the module docstring); ``extra``: (loss, scale) pairs."""
    total = task * task_scale + weighted_aux(cfg, aux) * aux_scale
    for value, scale in extra:
        total = total + value * scale
    return total
