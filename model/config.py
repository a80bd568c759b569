"""Typed, self-validating configuration of ModernALBERT, and the presets (tiny, 50m, 120m).

Notation: d hidden size, I FFN intermediate size, h heads, e embedding size, V vocabulary, K parameter
groups, G applications per group (group depth), L = K·G layers. Layer i uses group ⌊i/G⌋'s weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from config_check import ConfigError, check

ROUTING_MODES = ("soft", "topk", "hardsoft")
RSL_ENTROPY = ("maximise", "minimise")  # model.routing.routing_specialization_loss's entropy_goal
ROUTE_INPUTS = ("shared", "per_projection")
EVAL_ROUTING = ("same", "soft", "topk")
MOL_ROUTING = ("learned", "depth")
MOL_COMPUTE = ("grouped", "slots")
ATTN_BACKENDS = ("auto", "sdpa", "flash_attn", "torch_varlen")
POSITION_EMBEDDINGS = ("rope", "absolute")
NORM_POSITIONS = ("pre", "post")
FFN_ACTIVATIONS = ("geglu", "gelu")
# The two block families as ModelConfig field values: ModernBERT's (the defaults) and the BERT family's
# (BERT, MiniLM, E5, BGE, GTE), which model/teacher.py gives a BERT teacher's student and the stock ALBERT
# export requires.
MODERN_BLOCK = {"bias": False, "position_embedding": "rope", "norm_position": "pre", "ffn_activation": "geglu"}
BERT_BLOCK = {"bias": True, "position_embedding": "absolute", "norm_position": "post", "ffn_activation": "gelu"}


@dataclass
class MoLConfig:
    """Mixture of LoRAs inside the shared FFN of the listed groups."""

    groups: tuple[int, ...] = ()  # 0-based groups carrying MoL; () disables MoL
    num_experts: int = 8
    top_k: int = 2
    rank: int = 16
    alpha: float = 32.0  # LoRA scale s = alpha / rank
    jitter: float = 0.01  # multiplicative router-input noise while training
    aux_loss_coef: float = 0.01  # Switch load balancing E·Σ f·P
    z_loss_coef: float = 1e-3
    grouped: bool = True  # False: the plain per-expert reference computation
    # grouped: pairs sorted by expert, one F.grouped_mm per expert factor; slots: a dense matmul per routing
    # slot over all experts' factors, masked (no sort or grouped GEMM, E x the LoRA FLOPs; model/mol.py)
    compute: str = "grouped"
    # learned: a router picks each token's top-k experts; depth: expert j serves the group's j-th application,
    # every token, weight 1 (depth-wise LoRAs: the Relaxed Recursive Transformers baseline, arXiv 2410.20672;
    # needs num_experts = group_depth and top_k = 1; no router)
    routing: str = "learned"
    # learned routing: the router adds a learned bias per application of the group (zeros at init), so a
    # router shared by the group's depths can route them apart (model/routing.py: Router)
    depth_bias: bool = False

    def validate(self, num_groups: int, prefix: str = "mol") -> None:
        check(self.num_experts >= 1, f"{prefix}.num_experts", self.num_experts, "must be >= 1")
        check(
            1 <= self.top_k <= self.num_experts,
            f"{prefix}.top_k",
            self.top_k,
            f"must be in [1, num_experts={self.num_experts}]",
        )
        check(self.rank >= 1, f"{prefix}.rank", self.rank, "must be >= 1")
        check(self.alpha > 0, f"{prefix}.alpha", self.alpha, "must be > 0")
        check(0 <= self.jitter < 1, f"{prefix}.jitter", self.jitter, "must be in [0, 1)")
        check(
            self.aux_loss_coef >= 0 and self.z_loss_coef >= 0,
            f"{prefix}.aux_loss_coef/z_loss_coef",
            (self.aux_loss_coef, self.z_loss_coef),
            "must be >= 0",
        )
        for g in self.groups:
            check(
                0 <= g < num_groups, f"{prefix}.groups", self.groups, f"entries must be in [0, num_groups={num_groups})"
            )
        check(len(set(self.groups)) == len(self.groups), f"{prefix}.groups", self.groups, "must not repeat")
        check(self.routing in MOL_ROUTING, f"{prefix}.routing", self.routing, f"allowed: {', '.join(MOL_ROUTING)}")
        check(self.compute in MOL_COMPUTE, f"{prefix}.compute", self.compute, f"allowed: {', '.join(MOL_COMPUTE)}")
        check(isinstance(self.depth_bias, bool), f"{prefix}.depth_bias", self.depth_bias, "must be true or false")
        check(
            not (self.depth_bias and self.routing != "learned"),
            f"{prefix}.depth_bias",
            self.depth_bias,
            f"needs {prefix}.routing = learned (depth routing has no router)",
        )


@dataclass
class AttnExpertsConfig:
    """LoRA-Mixer: routed LoRA experts on Wqkv and Wo of the listed groups."""

    groups: tuple[int, ...] = ()  # () disables
    num_experts: int = 4
    top_k: int = 2
    rank: int = 8
    alpha: float = 16.0
    routing: str = "hardsoft"  # soft | topk | hardsoft (forward top-k, backward soft)
    jitter: float = 0.0
    rsl_alpha: float = 0.01  # load term of the Routing Specialization Loss
    rsl_lambda: float = 0.0  # weight (>= 0) of its per-token entropy term
    rsl_entropy: str = "maximise"  # the paper's printed sign; "minimise" sharpens each token's choice
    # shared: one router per block on the block input routes Wqkv and Wo alike (a PEFT adapter is one
    # whole expert); per_projection: Wqkv routed on the block input, Wo by its own router on the attention
    # output (the paper's placement)
    route: str = "shared"
    eval_routing: str = "same"  # routing in eval mode: same as training, or soft / topk (the paper: top-K)

    def validate(self, num_groups: int, prefix: str = "attn_experts") -> None:
        MoLConfig(
            groups=self.groups,
            num_experts=self.num_experts,
            top_k=self.top_k,
            rank=self.rank,
            alpha=self.alpha,
            jitter=self.jitter,
        ).validate(num_groups, prefix=prefix)
        check(self.routing in ROUTING_MODES, f"{prefix}.routing", self.routing, f"allowed: {', '.join(ROUTING_MODES)}")
        check(self.rsl_alpha >= 0, f"{prefix}.rsl_alpha", self.rsl_alpha, "must be >= 0")
        check(
            self.rsl_lambda >= 0,
            f"{prefix}.rsl_lambda",
            self.rsl_lambda,
            "must be >= 0 (the direction is rsl_entropy: maximise or minimise)",
        )
        check(
            self.rsl_entropy in RSL_ENTROPY,
            f"{prefix}.rsl_entropy",
            self.rsl_entropy,
            f"allowed: {', '.join(RSL_ENTROPY)}",
        )
        check(
            self.eval_routing in EVAL_ROUTING,
            f"{prefix}.eval_routing",
            self.eval_routing,
            f"allowed: {', '.join(EVAL_ROUTING)}",
        )
        check(self.route in ROUTE_INPUTS, f"{prefix}.route", self.route, f"allowed: {', '.join(ROUTE_INPUTS)}")


@dataclass
class ModelConfig:
    vocab_size: int = 32768
    embedding_size: int = 128  # e: factorised token table V×e, projected e→d
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_heads: int = 12
    num_groups: int = 9  # K
    group_depth: int = 3  # G
    global_every: int = 3  # layer i is global when i % global_every == 0
    local_window: int = 128  # local layers attend to |i - j| <= local_window // 2 (ModernBERT's convention)
    rope_theta_global: float = 160_000.0
    rope_theta_local: float = 10_000.0
    norm_eps: float = 1e-5
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_std: float = 0.02
    attn_backend: str = "auto"  # auto: flash_attn (CUDA, if installed) > torch_varlen (CUDA) > sdpa
    # The block's family. The defaults are ModernBERT's; a BERT-family teacher's student (BERT, MiniLM,
    # E5, BGE, GTE: tools/init_from_teacher.py) takes bias=True, absolute, post and gelu, so that at
    # K = the teacher's layers, G = 1 it computes exactly what the teacher computes.
    bias: bool = False  # biases in every Linear of the blocks and the MLM head, and in every LayerNorm
    position_embedding: str = "rope"  # rope | absolute (a learned d-wide table added before the embedding norm)
    max_position_embeddings: int = 512  # rows of the absolute table (unused with rope)
    norm_position: str = "pre"  # pre: x + f(norm(x)), final norm; post: norm(x + f(x)), no final norm
    ffn_activation: str = "geglu"  # geglu: Wo(gelu(u)·g), Wi d→2I; gelu: Wo(gelu(Wi x)), Wi d→I
    mol: MoLConfig = field(default_factory=MoLConfig)
    attn_experts: AttnExpertsConfig = field(default_factory=AttnExpertsConfig)

    @property
    def num_layers(self) -> int:
        return self.num_groups * self.group_depth

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def is_global(self, layer: int) -> bool:
        return layer % self.global_every == 0

    def validate(self, prefix: str = "") -> "ModelConfig":
        """``prefix``: where this config sits in a larger one (``"model."`` in a run config)."""
        p = prefix
        for name in (
            "vocab_size",
            "embedding_size",
            "hidden_size",
            "intermediate_size",
            "num_heads",
            "num_groups",
            "group_depth",
            "global_every",
            "local_window",
        ):
            check(getattr(self, name) >= 1, p + name, getattr(self, name), "must be >= 1")
        check(
            self.hidden_size % self.num_heads == 0,
            p + "num_heads",
            self.num_heads,
            f"must divide hidden_size={self.hidden_size}",
        )
        if self.position_embedding == "rope":
            check(
                self.head_dim % 2 == 0, p + "num_heads", self.num_heads, "hidden_size / num_heads must be even (RoPE)"
            )
        check(self.local_window % 2 == 0, p + "local_window", self.local_window, "must be even (a symmetric window)")
        for name in ("rope_theta_global", "rope_theta_local", "norm_eps", "init_std"):
            check(getattr(self, name) > 0, p + name, getattr(self, name), "must be > 0")
        for name in ("embedding_dropout", "attention_dropout"):
            check(0 <= getattr(self, name) < 1, p + name, getattr(self, name), "must be in [0, 1)")
        for name, allowed in (
            ("position_embedding", POSITION_EMBEDDINGS),
            ("norm_position", NORM_POSITIONS),
            ("ffn_activation", FFN_ACTIVATIONS),
        ):
            check(getattr(self, name) in allowed, p + name, getattr(self, name), f"allowed: {', '.join(allowed)}")
        check(isinstance(self.bias, bool), p + "bias", self.bias, "must be true or false")
        check(
            self.max_position_embeddings >= 1,
            p + "max_position_embeddings",
            self.max_position_embeddings,
            "must be >= 1",
        )
        check(
            self.attn_backend in ATTN_BACKENDS,
            p + "attn_backend",
            self.attn_backend,
            f"allowed: {', '.join(ATTN_BACKENDS)}",
        )
        self.mol.validate(self.num_groups, p + "mol")
        if self.mol.routing == "depth":
            check(
                self.mol.num_experts == self.group_depth and self.mol.top_k == 1,
                p + "mol.routing",
                "depth",
                f"needs mol.num_experts = group_depth ({self.group_depth}) and mol.top_k = 1, has "
                f"{self.mol.num_experts} and {self.mol.top_k}",
            )
        self.attn_experts.validate(self.num_groups, p + "attn_experts")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model config fields: {sorted(unknown)}")
        mol, ae = d.pop("mol", None) or {}, d.pop("attn_experts", None) or {}
        return cls(
            **d,
            mol=MoLConfig(**{**mol, "groups": tuple(mol.get("groups", ()))}),
            attn_experts=AttnExpertsConfig(**{**ae, "groups": tuple(ae.get("groups", ()))}),
        ).validate()


def preset(name: str, **overrides) -> ModelConfig:
    """A preset (``tiny``, ``50m``, ``120m``) with optional top-level overrides."""
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r}: allowed: {', '.join(PRESETS)}")
    cfg = dataclasses.replace(PRESETS[name](), **overrides)
    return cfg.validate()


PRESETS = {
    # tiny uses e = 64 [decision]: with V = 32 768 the e = 128 table alone (4.2 M) would break "< 3 M".
    "tiny": lambda: ModelConfig(
        embedding_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_heads=4,
        num_groups=2,
        group_depth=2,
        mol=MoLConfig(groups=(1,)),
    ),
    "50m": lambda: ModelConfig(
        hidden_size=768, intermediate_size=1152, num_heads=12, num_groups=9, group_depth=3, mol=MoLConfig(groups=(2, 3))
    ),
    "120m": lambda: ModelConfig(
        hidden_size=1024,
        intermediate_size=2624,
        num_heads=16,
        num_groups=9,
        group_depth=3,
        mol=MoLConfig(groups=(2, 3, 4, 5)),
    ),
}
