"""ModernALBERT: a recursive (parameter-shared) BERT encoder, unpadded, with MoL and LoRA-Mixer experts.

Layer i (0-based) applies the block of group ⌊i/G⌋; a ``RecursiveGroup`` runs its one block G times in
a row, so a parallelism wrapper (FSDP2, activation checkpointing, compile) applied per group keeps the
weights gathered across the G applications. Blocks are pre-norm; layer 0 has no attention norm (the
embedding norm precedes it). Layer i is global when ``i % global_every == 0``, else local (window
``local_window``), with the matching RoPE θ — decided by the layer index, not the group.

The BERT family (``bias``, ``position_embedding="absolute"``, ``norm_position="post"``,
``ffn_activation="gelu"``; see ``model/config.py``) changes only the block's details: learned positions
are added to the projected token embedding before the embedding norm, a post-norm block is
``x = attn_norm(x + attn(x)); x = ffn_norm(x + ffn(x))`` at every layer and there is no final norm.

Everything runs on a flat stream of T real tokens with ``cu_seqlens``; nothing here knows of
``torch.distributed``. Shapes: T tokens, D hidden, H heads, Dh head size, M masked positions, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attention import RotaryEmbedding, apply_rotary, attention, resolve_backend, segment_positions
from model.config import ModelConfig
from model.init import fill_, module_generator
from model.lora_mixer import MixtureLinear
from model.mol import DenseFFN, MoLFFN
from model.routing import Router, RoutingRecorder, mixing_weights, routing_specialization_loss


class TensorSink:
    """A list of tensors the encoder fills during a forward (e.g. every application's Wqkv output). Not a list
    itself: wrappers that rebuild a forward's container arguments (FSDP2's input casting) pass it through."""

    def __init__(self) -> None:
        self.items: list[torch.Tensor] = []


@dataclass
class ForwardContext:
    """Per-forward inputs shared by every layer (built once, not per layer)."""

    cu_seqlens: torch.Tensor
    max_seqlen: int
    rope: dict[bool, tuple[torch.Tensor, torch.Tensor]]  # is_global → (cos, sin) [T, Dh]
    recorder: RoutingRecorder  # the routed modules' auxiliary losses and statistics
    attn_backend: str  # resolved once per forward (attention.resolve_backend), outside the blocks
    expert_ids_T: torch.Tensor | None = None  # LoRA-Mixer domain-forced routing: one expert per token
    route_targets_T: torch.Tensor | None = None  # LoRA-Mixer router supervision: the expert each token should pick
    per_application: list[torch.Tensor] | None = None  # filled with every application's output when asked for
    qkv_out: TensorSink | None = None  # filled with every application's Wqkv output [T, 3D] when asked for


@dataclass(frozen=True)
class Application:
    """One application of a group's block: what its code path depends on, and which layer it is.

    ``is_global`` and ``first`` choose the code (global or sliding-window attention with its RoPE θ; layer 0
    of a pre-norm stack skips its attention norm): under ``torch.compile`` they are constants, so a block
    compiles one graph per kind of application, not per layer. ``layer_T`` is the layer index as a 0-d
    tensor, a graph input (MoL's depth routing and router depth bias read ``layer % group_depth`` from
    it); the routing statistics are named by the Python ``layer``, outside the block
    (``RoutingRecorder.name``), where compilation does not see it.
    """

    is_global: bool
    first: bool
    layer_T: torch.Tensor

    @classmethod
    def of(cls, cfg: ModelConfig, layer: int, device: torch.device) -> "Application":
        # torch.full, not torch.tensor: a fill kernel on the device, no host-to-device copy
        return cls(cfg.is_global(layer), layer == 0, torch.full((), layer, dtype=torch.long, device=device))


class Attention(nn.Module):
    """Self-attention; in an ``attn_experts`` group, Wqkv and Wo are LoRA-Mixer ``MixtureLinear``s.

    Routing (``attn_experts.route``): ``shared`` — one router on the block input gives the weights of
    both projections (a PEFT adapter stays one whole expert); ``per_projection`` — Wqkv is routed on the
    block input by ``router`` and Wo on the attention output by ``router_o`` (the paper's placement).
    ``ctx.expert_ids_T`` forces the routing (one-hot: LoRA-Mixer's domain-forced stage); the routers then
    record how well they predict the forced expert (``attn_route_ce``) instead of the RSL.
    ``ctx.route_targets_T`` leaves the routing to the routers and records the same cross-entropy next to
    the RSL (supervised routing: the routers keep learning each task's expert while they route).
    """

    def __init__(self, cfg: ModelConfig, group: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        ae = cfg.attn_experts
        self.routed = group in ae.groups
        if self.routed:
            self.router = Router(d, ae.num_experts, ae.top_k, ae.jitter)
            if ae.route == "per_projection":
                self.router_o = Router(d, ae.num_experts, ae.top_k, ae.jitter)
            self.Wqkv: nn.Linear = MixtureLinear(d, 3 * d, ae.num_experts, ae.rank, ae.alpha, cfg.bias)
            self.Wo: nn.Linear = MixtureLinear(d, d, ae.num_experts, ae.rank, ae.alpha, cfg.bias)
        else:
            self.Wqkv = nn.Linear(d, 3 * d, bias=cfg.bias)
            self.Wo = nn.Linear(d, d, bias=cfg.bias)

    @staticmethod
    def route_ce(router: Router, x_TD: torch.Tensor, target_T: torch.Tensor) -> torch.Tensor:
        """The router's cross-entropy to the target expert, on a detached input: it trains the router to read
        the hidden state, never the experts to write their task into it (with the gradient let through, the
        experts learned to mark their tokens for the later layers' routers instead of the task)."""
        return F.cross_entropy(router.logits(x_TD.detach()), target_T)

    def route(self, router: Router, x_TD: torch.Tensor, kind: str, ctx: ForwardContext) -> torch.Tensor:
        """Per-token expert weights [T, E] from ``router`` on ``x_TD``; records its losses and statistics."""
        ae = self.cfg.attn_experts
        r = router(x_TD)
        if ctx.expert_ids_T is not None:
            ctx.recorder.record(kind, r, {"attn_route_ce": self.route_ce(router, x_TD, ctx.expert_ids_T)})
            return F.one_hot(ctx.expert_ids_T, ae.num_experts).to(r.probs_TE.dtype)
        losses = {"attn_rsl": routing_specialization_loss(r, ae.rsl_alpha, ae.rsl_lambda, ae.rsl_entropy)}
        if ctx.route_targets_T is not None:
            losses["attn_route_ce"] = self.route_ce(router, x_TD, ctx.route_targets_T)
        ctx.recorder.record(kind, r, losses)
        mode = ae.routing if self.training or ae.eval_routing == "same" else ae.eval_routing
        return mixing_weights(r, mode)

    def forward(self, x_TD: torch.Tensor, app: Application, ctx: ForwardContext) -> torch.Tensor:
        cfg = self.cfg
        T = x_TD.shape[0]
        if self.routed:
            w_TE = self.route(self.router, x_TD, "attn", ctx)
            qkv = self.Wqkv(x_TD, w_TE)
        else:
            qkv = self.Wqkv(x_TD)
        if ctx.qkv_out is not None:  # attention-relation distillation reads q, k, v before RoPE
            ctx.qkv_out.items.append(qkv)
        # split (not slicing): its backward is one cat, where slices would zero-fill [T, 3, H, Dh] twice
        qk, v = qkv.view(T, 3, cfg.num_heads, cfg.head_dim).split([2, 1], dim=1)
        is_global = app.is_global
        if ctx.rope:
            qk = apply_rotary(qk, *ctx.rope[is_global])  # q and k rotated together
        q, k = qk.unbind(dim=1)
        v = v.squeeze(1)
        o_THD = attention(
            q,
            k,
            v,
            ctx.cu_seqlens,
            ctx.max_seqlen,
            None if is_global else cfg.local_window // 2,
            ctx.attn_backend,
            cfg.attention_dropout if self.training else 0.0,
        )
        o_TD = o_THD.reshape(T, cfg.hidden_size)
        if not self.routed:
            return self.Wo(o_TD)
        if cfg.attn_experts.route == "per_projection":
            w_TE = self.route(self.router_o, o_TD, "attn_o", ctx)
        return self.Wo(o_TD, w_TE)


class Block(nn.Module):
    """One transformer block (pre- or post-norm); ``app`` says which application (layer) this call is."""

    def __init__(self, cfg: ModelConfig, group: int) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.post_norm = cfg.norm_position == "post"
        # pre-norm: group 0's block also runs at layers 1..G-1, which do normalise: it keeps the norm, layer 0
        # skips it; post-norm: every layer normalises after its attention
        has_attn_norm = self.post_norm or group > 0 or cfg.group_depth > 1
        self.attn_norm: nn.LayerNorm | None = (
            nn.LayerNorm(d, eps=cfg.norm_eps, bias=cfg.bias) if has_attn_norm else None
        )
        self.attn = Attention(cfg, group)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.norm_eps, bias=cfg.bias)
        self.ffn: MoLFFN | DenseFFN
        if group in cfg.mol.groups:
            self.ffn = MoLFFN(d, cfg.intermediate_size, cfg.mol, cfg.ffn_activation, cfg.bias, cfg.group_depth)
        else:
            self.ffn = DenseFFN(d, cfg.intermediate_size, cfg.ffn_activation, cfg.bias)

    def forward(self, x_TD: torch.Tensor, app: Application, ctx: ForwardContext) -> torch.Tensor:
        attn_norm = cast(nn.LayerNorm, self.attn_norm)  # None only where it is not called (pre-norm, layer 0)
        if self.post_norm:
            x_TD = attn_norm(x_TD + self.attn(x_TD, app, ctx))
            return self.ffn_norm(x_TD + self.ffn(x_TD, app.layer_T, ctx.recorder))
        h = x_TD if app.first else attn_norm(x_TD)
        x_TD = x_TD + self.attn(h, app, ctx)
        return x_TD + self.ffn(self.ffn_norm(x_TD), app.layer_T, ctx.recorder)


class RecursiveGroup(nn.Module):
    """K-th parameter group: one block applied G times, at layers first_layer … first_layer + G - 1."""

    def __init__(self, cfg: ModelConfig, group: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.first_layer, self.depth = group * cfg.group_depth, cfg.group_depth
        self.block = Block(cfg, group)

    def forward(self, x_TD: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        for layer in range(self.first_layer, self.first_layer + self.depth):
            x_TD = self.block(x_TD, Application.of(self.cfg, layer, x_TD.device), ctx)
            ctx.recorder.name(layer)  # this application's routing statistics, named outside the block
            if ctx.per_application is not None:
                ctx.per_application.append(x_TD)
        return x_TD


class Embeddings(nn.Module):
    """ALBERT factorisation: token table V×e → linear e→d (no bias) [+ absolute position] → LayerNorm → dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        self.proj = nn.Linear(cfg.embedding_size, cfg.hidden_size, bias=False)
        # BERT's position table (its token-type-0 row folded in by model/teacher.py): d wide, not factorised
        self.pos_embeddings = (
            nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size) if cfg.position_embedding == "absolute" else None
        )
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.embedding_dropout)

    def forward(self, input_ids_T: torch.Tensor, pos_T: torch.Tensor | None = None) -> torch.Tensor:
        x_TD = self.proj(self.tok_embeddings(input_ids_T))
        if self.pos_embeddings is not None:
            x_TD = x_TD + self.pos_embeddings(pos_T)
        return self.drop(self.norm(x_TD))


class ModernAlbertModel(nn.Module):
    """The encoder: embeddings → K recursive groups (L = K·G layers) → final LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.embeddings = Embeddings(cfg)
        self.groups = nn.ModuleList(RecursiveGroup(cfg, g) for g in range(cfg.num_groups))
        # post-norm blocks end normalised: no final norm (BERT has none)
        self.final_norm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.bias)
            if cfg.norm_position == "pre"
            else nn.Identity()
        )
        self.rope = nn.ModuleDict(
            {
                "global": RotaryEmbedding(cfg.head_dim, cfg.rope_theta_global),
                "local": RotaryEmbedding(cfg.head_dim, cfg.rope_theta_local),
            }
        )

    def context(
        self,
        pos_T: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        x_TD: torch.Tensor,
        recorder: RoutingRecorder,
        expert_ids_T: torch.Tensor | None = None,
        route_targets_T: torch.Tensor | None = None,
    ) -> ForwardContext:
        """What every layer of this forward shares; ``x_TD`` the embeddings' output (its dtype and device
        decide the RoPE tables' dtype and the attention backend, as the blocks' q/k/v have them)."""
        rope = {}
        if self.cfg.position_embedding == "rope":
            rope = {True: self.rope["global"](pos_T, x_TD.dtype), False: self.rope["local"](pos_T, x_TD.dtype)}
        backend = resolve_backend(self.cfg.attn_backend, x_TD)
        return ForwardContext(cu_seqlens, int(max_seqlen), rope, recorder, backend, expert_ids_T, route_targets_T)

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        output_hidden_states: bool = False,
        recorder: RoutingRecorder | None = None,
        expert_ids_T: torch.Tensor | None = None,
        route_targets_T: torch.Tensor | None = None,
        hidden_at: str = "group",
        qkv_out: TensorSink | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """input_ids [T], cu_seqlens [N+1] → (last hidden state [T, D], per-group outputs if asked; with
        ``hidden_at="application"`` every application's output instead, K·G of them). ``qkv_out``: a sink
        that receives every application's Wqkv output [T, 3D] (q, k, v before RoPE), in order.

        Pass a ``RoutingRecorder`` to receive the routed modules' auxiliary losses and statistics;
        ``expert_ids_T`` [T] forces the LoRA-Mixer routing (each token to that expert, weight 1);
        ``route_targets_T`` [T] only supervises the routers (``attn_route_ce``), which still route.
        """
        if self.cfg.position_embedding == "absolute" and max_seqlen > self.cfg.max_position_embeddings:
            raise ValueError(
                f"a segment of {max_seqlen} tokens exceeds model.max_position_embeddings="
                f"{self.cfg.max_position_embeddings} (absolute positions)"
            )
        pos_T = segment_positions(cu_seqlens, input_ids.shape[0])  # positions restart in every segment
        x_TD = self.embeddings(input_ids, pos_T)
        ctx = self.context(
            pos_T,
            cu_seqlens,
            max_seqlen,
            x_TD,
            recorder if recorder is not None else RoutingRecorder(),
            expert_ids_T,
            route_targets_T,
        )
        ctx.qkv_out = qkv_out
        hidden: list[torch.Tensor] = []
        per_application = output_hidden_states and hidden_at == "application"
        if per_application:
            ctx.per_application = hidden
        for group in self.groups:
            x_TD = group(x_TD, ctx)
            if output_hidden_states and not per_application:
                hidden.append(x_TD)
        return self.final_norm(x_TD), hidden


class MLMHead(nn.Module):
    """ModernBERT's prediction head: dense d→d, GELU, LayerNorm (the decoder is tied, see below)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.bias)

    def forward(self, h_MD: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(h_MD)))


def tied_logits(emb: Embeddings, head: MLMHead, bias: torch.Tensor, h_MD: torch.Tensor) -> torch.Tensor:
    """(head(h)·P)·Eᵀ + b: two thin matmuls instead of materialising the folded V×d decoder."""
    return (head(h_MD) @ emb.proj.weight) @ emb.tok_embeddings.weight.t() + bias


class MaskedLMOutput(NamedTuple):
    """A NamedTuple (not a dataclass) so wrappers that walk module outputs (DeepSpeed ZeRO-3) see its tensors."""

    mlm_loss: torch.Tensor  # mean over the masked tokens (0 without labels); model/losses.py adds the aux terms
    mlm_accuracy: torch.Tensor
    num_masked: int
    logits: torch.Tensor  # [M, V], masked positions only
    aux_losses: dict[str, torch.Tensor]  # unscaled sums over applications
    routing_stats: dict[str, dict[str, torch.Tensor]]  # "layer{i}.{attn|ffn}" → detached statistics
    hidden_states: list[torch.Tensor]  # per-group (or per-application) outputs when asked for, else empty
    last_hidden_state: torch.Tensor | None = None  # [T, D] after the final norm, when hidden states are asked for
    qkv_states: list[torch.Tensor] | None = None  # every application's Wqkv output [T, 3D], when asked for


class ModernAlbertForMaskedLM(nn.Module):
    """Encoder + MLM head with the decoder tied to the factorised embedding: logits = (h·P)·Eᵀ + b.

    Sparse prediction: the head runs only at ``mlm_positions``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.model = ModernAlbertModel(cfg)
        self.head = MLMHead(cfg)
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        if not self.decoder_bias.is_meta:  # on the meta device, the caller initialises after sharding
            self.init_weights()

    def init_weights(self, seed: int | None = None, select: Callable[[str], bool] | None = None) -> None:
        """Truncated normal (std init_std); output projections scaled by 1/√(2L); LoRA B = 0.

        Each module draws from its own generator seeded by (``seed``, its name) (``model/init.py``);
        ``seed`` defaults to a draw from torch's global generator, so ``torch.manual_seed`` still decides.
        ``select(name)``: only the modules it accepts (one unit of a sharded model; "" is the root).
        """
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.num_layers)
        for name, m in self.named_modules():
            if select is not None and not select(name):
                continue
            g = module_generator(seed, name)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                s = out_std if name.endswith(("attn.Wo", "ffn.Wo")) else std
                fill_(m.weight, nn.init.trunc_normal_, g, std=s, a=-2 * s, b=2 * s)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None:  # bias=True configs
                nn.init.zeros_(m.bias)
            if isinstance(m, (MoLFFN, MixtureLinear)):
                m.reset_lora(g)
            if isinstance(m, Router):
                fill_(m.weight, nn.init.normal_, g, std=0.02)
                if m.depth_bias is not None:
                    nn.init.zeros_(m.depth_bias)
        if select is None or select(""):
            nn.init.zeros_(self.decoder_bias)

    def decoder_weight(self) -> torch.Tensor:
        """The folded decoder E·Pᵀ [V, d] (what a stock ModernBERT export stores)."""
        return self.model.embeddings.tok_embeddings.weight @ self.model.embeddings.proj.weight.t()

    def logits(self, h_MD: torch.Tensor) -> torch.Tensor:
        return tied_logits(self.model.embeddings, self.head, self.decoder_bias, h_MD)

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        mlm_positions: torch.Tensor,
        mlm_labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        hidden_at: str = "group",
        output_qkv: bool = False,
    ) -> MaskedLMOutput:
        recorder = RoutingRecorder()
        sink = TensorSink() if output_qkv else None
        h_TD, hidden = self.model(
            input_ids, cu_seqlens, max_seqlen, output_hidden_states, recorder, hidden_at=hidden_at, qkv_out=sink
        )
        recorder.close()
        last = h_TD if output_hidden_states else None
        qkv = sink.items if sink is not None else None
        logits_MV = self.logits(h_TD[mlm_positions])
        M = len(mlm_positions)
        if mlm_labels is None:
            zero = logits_MV.new_zeros(())
            return MaskedLMOutput(zero, zero, M, logits_MV, recorder.aux_losses, recorder.stats, hidden, last, qkv)
        mlm_loss = F.cross_entropy(logits_MV.float(), mlm_labels)
        with torch.no_grad():
            acc = (logits_MV.argmax(-1) == mlm_labels).float().mean()
        return MaskedLMOutput(mlm_loss, acc, M, logits_MV, recorder.aux_losses, recorder.stats, hidden, last, qkv)


def mol_layers(model: nn.Module) -> dict[int, MoLFFN]:
    """Group index → its MoL FFN, for any model whose encoder is ``model.model`` (MLM, classifiers)."""
    groups = cast(list[RecursiveGroup], model.get_submodule("model.groups"))
    return {g: grp.block.ffn for g, grp in enumerate(groups) if isinstance(grp.block.ffn, MoLFFN)}


def model_inputs(batch: dict) -> dict:
    """The model's arguments out of a loader batch (``pretrain/data.py``)."""
    return {k: batch[k] for k in ("input_ids", "cu_seqlens", "max_seqlen", "mlm_positions", "mlm_labels")}
