"""The shared FFN and its Mixture-of-LoRAs version (MoL).

The FFN is GeGLU (``act(h) = gelu(u)·g`` with u, g = h.chunk(2), Wi: D→2I; ModernBERT's) or plain GELU
(``act(h) = gelu(h)``, Wi: D→I; the BERT family's), with optional biases (``ModelConfig.ffn_activation``,
``bias``). Expert j adds LoRA factors to both FFN matrices (scale s = α/r):
    FFN_j(x) = (Wo + s·B2_j A2_j) · act((Wi + s·B1_j A1_j) x + b_i) + b_o,   output Σ_{j ∈ top-k} w_j FFN_j(x).
The top-k weights sum to 1, so the output bias b_o is added once.

The grouped computation never runs k full FFNs: ``Wi x`` once, then per (token, chosen expert) pair
``h = Wi x + s·B1_j(A1_j x)`` and one activation, ``a = act(h)``; by linearity of Wo the output is
``Wo(Σ w_j a_j) + s·Σ w_j B2_j(A2_j a_j)``. Pairs are sorted by expert so each expert's low-rank
matmul runs once on a contiguous block (no Python loop over tokens). The A1 and B2 products are done
for all experts at once (E·r is small next to 2I); B1 and A2 are per expert, in one ``F.grouped_mm`` call
each where its layout fits (the block ends stay on the device: no host sync in the forward), else in a
matmul per expert (block sizes read on the host; also the reference for the parity tests). Under torch.compile the
pairs leave and rejoin token order through permutations whose backward is the inverse gather (``_TokenRows``,
``_SumPairs``: no scatter-add), which Inductor fuses with the sums and the activation; eager indexes and
``index_add_``s, which writes less there (``benchmarks/bench_mol.py --count [--compile]``). ``reference`` computes
every expert's full FFN with merged weights: slow and obviously right, for the parity tests.

``compute="slots"`` is the same sum without sorting or grouping: for each routing slot k (K of them) one
dense matmul with inner size E·r, whose left operand is the A1 (or A2) output masked to that slot's expert
(``h_k = Wi x + [mask_k ∘ (x A1_allᵀ)] B1_all``): no permutation, no sort, no scatter-add, no host read and no
grouped GEMM (so any dtype compiles whole), for E× the FLOPs of the B1 and A2 products (about +20 % of a
MoL FFN at the 120m shape). ``benchmarks/bench_mol.py`` counts and times both.

The grouped computation is its own parameterless module (``GroupedLoRAFFN``) that receives the
weights as arguments, so expert parallelism can wrap that one call from outside with forward hooks
(``pretrain/expert_parallel.py``: tokens sent to the experts' owners before it, brought back after)
without renaming a parameter or replacing a method.

Shapes: T tokens, D hidden, F = Wi's output (2I GeGLU, I GELU), I intermediate, E experts, K top-k, N = T·K pairs,
R LoRA rank.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import MoLConfig
from model.init import fill_
from model.routing import Routing, Router, RoutingRecorder, expert_counts, load_balance_loss, topk_dense, z_loss


def geglu(h_NF: torch.Tensor) -> torch.Tensor:
    u, g = h_NF.chunk(2, dim=-1)
    return F.gelu(u) * g


# ModelConfig.ffn_activation → act(Wi x) [N, F] → [N, I]
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"geglu": geglu, "gelu": F.gelu}


def wi_width(intermediate: int, activation: str) -> int:
    return 2 * intermediate if activation == "geglu" else intermediate


class DenseFFN(nn.Module):
    """The shared FFN without experts: Wo(act(Wi x)), act GeGLU or GELU."""

    def __init__(self, dim: int, intermediate: int, activation: str = "geglu", bias: bool = False) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.Wi = nn.Linear(dim, wi_width(intermediate, activation), bias=bias)
        self.Wo = nn.Linear(intermediate, dim, bias=bias)

    def forward(
        self, x_TD: torch.Tensor, layer: int | torch.Tensor = 0, recorder: RoutingRecorder | None = None
    ) -> torch.Tensor:
        return self.Wo(self.act(self.Wi(x_TD)))


class ExpertBlocks:
    """Where each expert's rows are in the expert-sorted pairs: ``offsets`` [E] int32, the end of each block,
    on the device; ``counts()``, the block sizes on the host, only for the reference path (a host sync)."""

    def __init__(self, exp_N: torch.Tensor, num_experts: int) -> None:
        self.offsets = expert_counts(exp_N, num_experts).cumsum(0).to(torch.int32)
        self._counts: list[int] | None = None

    def counts(self) -> list[int]:
        if self._counts is None:
            self._counts = torch.diff(self.offsets, prepend=self.offsets.new_zeros(1)).tolist()
        return self._counts


def grouped_mm_unfit(x_NI: torch.Tensor, w_EOI: torch.Tensor) -> str | None:
    """Why ``F.grouped_mm`` cannot compute ``x_NI`` by blocks times ``w_EOI[e]ᵀ`` here, or None when it can: it
    needs bf16 (CUDA: SM >= 8.0), or fp32/fp16 eagerly on CPU (its compiled form is bf16 only), with 16-byte
    aligned rows and columns."""
    if not hasattr(F, "grouped_mm"):
        return f"torch {torch.__version__} has no F.grouped_mm"
    if x_NI.dtype != w_EOI.dtype or x_NI.dim() != 2:
        return f"operands {x_NI.dtype} {tuple(x_NI.shape)} and {w_EOI.dtype} differ in dtype or are not 2-D"
    compiling = torch.compiler.is_compiling()
    if x_NI.device.type == "cuda":
        if x_NI.dtype != torch.bfloat16:
            return f"{x_NI.dtype} on CUDA (grouped_mm is bf16 only there)"
        if torch.cuda.get_device_capability(x_NI.device) < (8, 0):
            return "a GPU older than SM 8.0"
    elif x_NI.device.type != "cpu":
        return f"device {x_NI.device.type}"
    elif x_NI.dtype != torch.bfloat16 and (x_NI.dtype not in (torch.float32, torch.float16) or compiling):
        return f"{x_NI.dtype} under torch.compile (compiled grouped_mm is bf16 only)"
    align = 16 // x_NI.element_size()
    if x_NI.shape[1] % align or w_EOI.shape[1] % align:
        return f"inner sizes {x_NI.shape[1]}, {w_EOI.shape[1]} not multiples of {align} (16-byte rows)"
    if not (x_NI.is_contiguous() and w_EOI.is_contiguous()):
        return "non-contiguous operands"
    if not compiling and (x_NI.data_ptr() % 16 or w_EOI.data_ptr() % 16):
        return "operands not 16-byte aligned in memory"
    return None


def grouped_mm_fits(x_NI: torch.Tensor, w_EOI: torch.Tensor) -> bool:
    return grouped_mm_unfit(x_NI, w_EOI) is None


_WARNED: set[str] = set()


def grouped_matmul(x_NI: torch.Tensor, w_EOI: torch.Tensor, blocks: ExpertBlocks, fast: bool = True) -> torch.Tensor:
    """Row block e of ``x`` (blocks in expert order) times ``w[e]ᵀ``; [N, O].

    One ``F.grouped_mm`` call where it fits (no host sync: the block ends stay on the device); else, and
    with ``fast=False``, the reference: a matmul per expert on ``torch.split`` blocks (sizes read on the host).
    A fast call that falls back warns once per reason.
    """
    if fast:
        why = grouped_mm_unfit(x_NI, w_EOI)
        if why is None:
            return F.grouped_mm(x_NI, w_EOI.transpose(1, 2), offs=blocks.offsets)
        if why not in _WARNED and not torch.compiler.is_compiling():
            _WARNED.add(why)
            warnings.warn(f"MoL: the per-expert matmul loop runs instead of F.grouped_mm: {why}", stacklevel=2)
    counts = blocks.counts()
    outs = [blk @ w_EOI[e].t() for e, blk in enumerate(torch.split(x_NI, counts)) if counts[e]]
    return torch.cat(outs) if outs else x_NI.new_zeros(0, w_EOI.shape[1])


def sort_pairs(
    idx_TK: torch.Tensor, w_TK: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The N = T·K (token, expert) pairs sorted by expert (stable): the permutation of the token-order
    flattening [N], and each pair's token [N], expert [N] and weight [N]."""
    K = idx_TK.shape[1]
    exp_N = idx_TK.reshape(-1)
    order_N = torch.argsort(exp_N, stable=True)
    tok_N = torch.div(order_N, K, rounding_mode="floor")  # token of each pair, in expert order
    return order_N, tok_N, exp_N[order_N], w_TK.reshape(-1)[order_N].to(dtype)


class _TokenRows(torch.autograd.Function):
    """``h_TF[tok_N]``: each pair's token row, pairs in expert order [N, F]. Backward: the pair
    gradients gathered back to token order by the inverse permutation and summed over each token's K pairs:
    a gather and a reduction that Inductor fuses into one kernel, where indexing's own backward is a
    scatter-add (an fp32 accumulation buffer and its conversion under compile)."""

    @staticmethod
    def forward(ctx, h_TF: torch.Tensor, tok_N: torch.Tensor, inv_N: torch.Tensor, K: int) -> torch.Tensor:
        ctx.save_for_backward(inv_N)
        ctx.K = K
        return h_TF[tok_N]

    @staticmethod
    def backward(ctx, g_NF: torch.Tensor):
        (inv_N,) = ctx.saved_tensors
        return g_NF[inv_N].view(-1, ctx.K, g_NF.shape[1]).sum(1), None, None, None


class _SumPairs(torch.autograd.Function):
    """Σ over each token's K pairs of ``x_NI`` (pairs in expert order) [T, I]: the pairs put back in token
    order by the inverse permutation and summed (one fused kernel under compile, no scatter-add); backward,
    each pair's token row of the gradient (a gather)."""

    @staticmethod
    def forward(ctx, x_NI: torch.Tensor, tok_N: torch.Tensor, inv_N: torch.Tensor, K: int) -> torch.Tensor:
        ctx.save_for_backward(tok_N)
        return x_NI[inv_N].view(-1, K, x_NI.shape[1]).sum(1)

    @staticmethod
    def backward(ctx, g_TI: torch.Tensor):
        (tok_N,) = ctx.saved_tensors
        return g_TI[tok_N], None, None, None


class GroupedLoRAFFN(nn.Module):
    """Σ_k w_TK·FFN_{idx_TK}(x_TD) for the experts whose factors it is given (no parameters of its own).

    ``Wi``/``Wo`` are the owner's shared projections, called as modules (so ZeRO-3 gathers them);
    ``A1, B1, A2, B2`` the expert factors with E in dim 0 — all experts, or, under expert
    parallelism, this rank's slice with ``idx_TK`` indexing into it.
    """

    def __init__(self, scale: float, activation: str = "geglu", compute: str = "grouped") -> None:
        super().__init__()
        self.scale = scale
        self.act = ACTIVATIONS[activation]
        self.compute = compute  # grouped | slots (MoLConfig.compute)
        self.grouped_mm = True  # False: the per-expert matmul reference (the parity tests)
        # how the pairs leave and rejoin token order: by permutations whose backward is the inverse gather
        # (True), or by indexing and index_add_ (False); None: permutations under torch.compile, where Inductor
        # fuses them (-21 % bytes at the 120m shape, benchmarks/RESULTS.md), indexing in eager, which writes less
        self.permute_pairs: bool | None = None

    def forward(
        self,
        x_TD: torch.Tensor,
        idx_TK: torch.Tensor,
        w_TK: torch.Tensor,
        Wi: nn.Module,
        Wo: nn.Module,
        A1: torch.Tensor,
        B1: torch.Tensor,
        A2: torch.Tensor,
        B2: torch.Tensor,
    ) -> torch.Tensor:
        if self.compute == "slots":
            return self.slots(x_TD, idx_TK, w_TK, Wi, Wo, A1, B1, A2, B2)
        T, D = x_TD.shape
        E, R, s = A1.shape[0], A1.shape[1], self.scale
        K = idx_TK.shape[1]
        permute = torch.compiler.is_compiling() if self.permute_pairs is None else self.permute_pairs
        h_TF = Wi(x_TD)
        order_N, tok_N, exp_N, w_N = sort_pairs(idx_TK, w_TK, x_TD.dtype)
        blocks = ExpertBlocks(exp_N, E)
        if permute:  # where pair n of the token-order flattening sits in expert order
            inv_N = torch.empty_like(order_N)
            inv_N[order_N] = torch.arange(len(order_N), device=order_N.device)

        # the scale goes into the small factors, not the big activations
        u_TER = (x_TD @ A1.reshape(E * R, D).t()).view(T, E, R)  # A1 of every expert at once
        u_NR = u_TER[tok_N, exp_N]
        lora_NF = grouped_matmul(u_NR, s * B1, blocks, self.grouped_mm)
        if permute:
            h_NF = _TokenRows.apply(h_TF, tok_N, inv_N, K) + lora_NF
        else:
            h_NF = F.embedding(tok_N, h_TF).add_(lora_NF)  # row gather
        a_NI = self.act(h_NF)
        if permute:
            y_TI = _SumPairs.apply(a_NI * w_N[:, None], tok_N, inv_N, K)
        else:
            y_TI = x_TD.new_zeros(T, a_NI.shape[1]).index_add_(0, tok_N, a_NI * w_N[:, None])
        v_NR = grouped_matmul(a_NI, A2, blocks, self.grouped_mm) * w_N[:, None]
        z_TER = x_TD.new_zeros(T, E, R).index_put_((tok_N, exp_N), v_NR)
        B2_DX = (s * B2).permute(1, 0, 2).reshape(D, E * R)  # B2 of every expert at once
        return Wo(y_TI) + z_TER.view(T, E * R) @ B2_DX.t()

    def slots(self, x_TD, idx_TK, w_TK, Wi, Wo, A1, B1, A2, B2) -> torch.Tensor:
        """The slot-masked dense form (``compute="slots"``): per routing slot, the A1 and A2 outputs of every
        expert masked to the slot's expert, times every expert's B1 (B2) at once."""
        T, D = x_TD.shape
        E, R, s = A1.shape[0], A1.shape[1], self.scale
        h_TF = Wi(x_TD)
        u_TER = (x_TD @ A1.reshape(E * R, D).t()).view(T, E, R)  # A1 of every expert at once
        B1_XF = (s * B1).permute(0, 2, 1).reshape(E * R, -1)  # [E·R, F]
        A2_XI = A2.reshape(E * R, -1)  # [E·R, I]
        experts_E = torch.arange(E, device=x_TD.device)
        y_TI = z_TX = None
        for k in range(idx_TK.shape[1]):
            mask_TE1 = (idx_TK[:, k, None] == experts_E).to(x_TD.dtype)[:, :, None]  # the slot's expert
            h_TF_k = torch.addmm(h_TF, (u_TER * mask_TE1).view(T, E * R), B1_XF)
            aw_TI = self.act(h_TF_k) * w_TK[:, k, None].to(x_TD.dtype)
            v_TX = ((aw_TI @ A2_XI.t()).view(T, E, R) * mask_TE1).view(T, E * R)
            y_TI = aw_TI if y_TI is None else y_TI + aw_TI
            z_TX = v_TX if z_TX is None else z_TX + v_TX
        assert y_TI is not None and z_TX is not None, "top_k >= 1"
        B2_DX = (s * B2).permute(1, 0, 2).reshape(D, E * R)  # B2 of every expert at once
        return Wo(y_TI) + z_TX @ B2_DX.t()


class MoLFFN(nn.Module):
    """The FFN with E routed LoRA experts on Wi and Wo; keys ``Wi``/``Wo`` match ``DenseFFN``."""

    def __init__(
        self,
        dim: int,
        intermediate: int,
        cfg: MoLConfig,
        activation: str = "geglu",
        bias: bool = False,
        group_depth: int = 1,
    ) -> None:
        super().__init__()
        self.cfg, self.group_depth = cfg, group_depth
        E, R, F_ = cfg.num_experts, cfg.rank, wi_width(intermediate, activation)
        self.act = ACTIVATIONS[activation]
        self.Wi = nn.Linear(dim, F_, bias=bias)
        self.Wo = nn.Linear(intermediate, dim, bias=bias)
        if cfg.routing == "learned":  # depth routing has no router
            self.router = Router(dim, E, cfg.top_k, cfg.jitter, group_depth if cfg.depth_bias else 0)
        self.A1 = nn.Parameter(torch.empty(E, R, dim))
        self.B1 = nn.Parameter(torch.zeros(E, F_, R))
        self.A2 = nn.Parameter(torch.empty(E, R, intermediate))
        self.B2 = nn.Parameter(torch.zeros(E, dim, R))
        self.scale = cfg.alpha / cfg.rank
        self.grouped_ffn = GroupedLoRAFFN(self.scale, activation, cfg.compute)
        self.reset_lora()

    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """A ~ Kaiming-uniform (as PEFT), B = 0: at init every expert equals the shared FFN."""
        for a in (self.A1, self.A2):
            for e in range(a.shape[0]):
                fill_(a.data[e], nn.init.kaiming_uniform_, generator, a=math.sqrt(5))
        nn.init.zeros_(self.B1)
        nn.init.zeros_(self.B2)

    def forward(
        self, x_TD: torch.Tensor, layer: int | torch.Tensor = 0, recorder: RoutingRecorder | None = None
    ) -> torch.Tensor:
        """``layer``: this application's layer index (an int, or a 0-d tensor inside a compiled block); only
        ``layer % group_depth`` is read (depth routing, the router's depth bias)."""
        depth = self.cfg.routing == "depth"
        if depth:
            r = self.depth_routing(x_TD, layer)
        else:
            r = self.router(x_TD, layer % self.group_depth if self.cfg.depth_bias else None)
        if recorder is not None:
            if depth:  # the same loss names as learned routing, at zero: nothing to balance
                zero = x_TD.new_zeros((), dtype=torch.float32)
                losses = {"mol_load_balance": zero, "mol_z": zero}
            else:
                losses = {"mol_load_balance": load_balance_loss(r), "mol_z": z_loss(r)}
            recorder.record("ffn", r, losses, layer if isinstance(layer, int) else None)
        if not self.cfg.grouped:
            return self.reference(x_TD, r)
        return self.grouped(x_TD, r.topk_idx_TK, r.topk_w_TK)

    def depth_routing(self, x_TD: torch.Tensor, layer: int | torch.Tensor) -> Routing:
        """Every token to expert j = this application's index in its group (``layer % group_depth``), weight 1."""
        T, E = x_TD.shape[0], self.cfg.num_experts
        j = torch.as_tensor(layer % self.group_depth, dtype=torch.long, device=x_TD.device)
        idx_TK = j.reshape(1, 1).expand(T, 1)
        probs_TE = F.one_hot(idx_TK[:, 0], E).float()
        return Routing(probs_TE, probs_TE, idx_TK, torch.ones(T, 1, device=x_TD.device))

    def grouped(self, x_TD: torch.Tensor, idx_TK: torch.Tensor, w_TK: torch.Tensor) -> torch.Tensor:
        """The fast path: ``GroupedLoRAFFN`` over this layer's experts."""
        return self.grouped_ffn(x_TD, idx_TK, w_TK, self.Wi, self.Wo, self.A1, self.B1, self.A2, self.B2)

    def reference(self, x_TD: torch.Tensor, r: Routing) -> torch.Tensor:
        """Every expert's full FFN with merged weights, mixed by the dense top-k weights."""
        gate_TE = topk_dense(r).to(x_TD.dtype)
        out = torch.zeros_like(x_TD)
        for j in range(self.cfg.num_experts):
            wi = self.Wi.weight + self.scale * self.B1[j] @ self.A1[j]
            wo = self.Wo.weight + self.scale * self.B2[j] @ self.A2[j]
            h = F.linear(x_TD, wi, self.Wi.bias)
            out = out + gate_TE[:, j : j + 1] * F.linear(self.act(h), wo, self.Wo.bias)
        return out

    def delta_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each expert's ΔWi = s·B1A1 [E, F, D] and ΔWo = s·B2A2 [E, D, I] (for merging)."""
        return self.scale * self.B1 @ self.A1, self.scale * self.B2 @ self.A2
