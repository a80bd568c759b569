"""Distillation losses against a frozen HuggingFace teacher: cosine on mapped hidden states, cosine on
mean-pooled sentence embeddings, KL on masked-token logits.

    distill.teacher=DIR   distill.hidden_weight=1.0   distill.pooled_weight=0.0   distill.kl_weight=1.0
    distill.temperature=2.0   distill.teacher_input=clean   distill.hidden_at=group   distill.mlm_weight=1.0

Four terms, added to the MLM loss with their weights:
  hidden  cosine distance 1 - cos(h_student, h_teacher) between each student group's output and the
          hidden state after its mapped teacher layer (``distill.layers``; by default the last teacher layer
          of each group's run in ``init_from``'s ``teacher_map.json``, else ``model/teacher.py``'s evenly
          spaced map), averaged over groups and over every real token of the global batch.
          ``hidden_at=application``: every application's output instead (K·G of them; a group's G
          applications against G evenly spaced layers of its run, its last included, so a K 2 × G 3
          student of a 6-layer teacher matches all six layers). Needs the same width.
  pooled  cosine distance between each document's mean-pooled student output (after the final norm: what
          a mean-pooling classifier sees) and the mean-pooled last hidden state of the teacher, averaged
          over documents weighted by their tokens (so it shares the hidden term's normaliser, and a
          two-token fragment at a sample's edge weighs little). It is the sentence-embedding objective of
          teachers like all-MiniLM-L6-v2. Needs the same width. Off by default: in the replication's short
          runs it fell to 0.18 without moving GLUE (studies/RESULTS.md, "levers").
  kl      KL(p_teacher || p_student) of the masked-token distributions at temperature τ, times τ²,
          averaged over every masked token of the global batch. Only with a teacher that has an MLM
          head and the student's vocabulary; otherwise it is off (said at start).
  relation  MiniLMv2's self-attention relation distillation (arXiv 2012.15828): the last application's
          queries, keys and values (Wqkv's output, before RoPE) and the teacher's last layer's, each split
          into ``relation_heads`` heads (default: the teacher's heads); per document and head the relation
          softmax(X Xᵀ / √d_r) over the document's tokens, and KL(teacher ‖ student) of each query token's
          row, averaged over the Q-Q, K-K and V-V relations and the heads, summed over tokens (normalised
          like ``hidden``). Needs the same width; BERT-family teachers (their query/key/value projections).
The MLM loss keeps its weight 1 unless ``distill.mlm_weight`` says otherwise (0: the teacher alone).
The teacher reads the clean text (``teacher_input=clean``: the masked positions hold their original
tokens, the MLM labels) and the student the masked one: the targets are then what the teacher says about
the text, not about [MASK] tokens it never saw in its own training (an embedding teacher such as
all-MiniLM-L6-v2 was not trained on them). ``masked`` gives the teacher the student's input, as before.
The teacher is loaded on every rank (not sharded: teachers for this model size are small), frozen, in
eval mode and no-grad, bf16 on GPU. Our batches are flat token streams: each document (``cu_seqlens``)
becomes one row of a padded batch for the teacher, and its outputs are unpadded back.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from model.classification import pool
from config_check import ConfigError
from data_prep.tokenizer_id import TokenizerId, check_same_tokenizer, file_tokenizer, warn
from model.config import ModelConfig
from model.teacher import TeacherError, layer_map, read_teacher_config
from pretrain.config import DistillConfig


def teacher_ids(inputs: dict, teacher_input: str) -> torch.Tensor:
    """The teacher's ids [T]: the student's masked input with the original tokens put back (``clean``), or as is."""
    if teacher_input == "masked":
        return inputs["input_ids"]
    return inputs["input_ids"].index_put((inputs["mlm_positions"],), inputs["mlm_labels"])


def init_layers(init_from: str, num_groups: int, group_depth: int = 1, hidden_at: str = "group") -> list[int]:
    """The last teacher layer of each group's depth run in ``init_from``'s ``teacher_map.json``
    (``tools/init_from_teacher.py``): the second of two groups stands in for layers 3-5 of a 6-layer teacher
    and is distilled towards layer 5's output, whether it starts as their mean or as a copy of layer 1
    (``--layer-select lower``). Maps written before ``group_to_depth_layers`` existed give the layers the
    group started from. With ``hidden_at="application"``, the G applications of a group are distilled towards
    G evenly spaced layers of its run, the last included (application j to the run's j-th layer when the run
    has G layers). [] when there is no map."""
    import json
    import os

    path = os.path.join(init_from, "teacher_map.json") if init_from else ""
    if not path or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    runs = info.get("group_to_depth_layers") or info.get("group_to_teacher_layers") or []
    if len(runs) != num_groups:
        return []
    if hidden_at == "application":  # G evenly spaced layers of each run, its last included (all of it when G = run)
        return [run[layer_map(group_depth, len(run))[j]] for run in runs for j in range(group_depth)]
    return [run[-1] for run in runs]


class Teacher:
    def __init__(
        self,
        cfg: DistillConfig,
        student: ModelConfig,
        seq_len: int,
        device: torch.device,
        verbose: bool,
        init_from: str = "",
        shards: TokenizerId | None = None,
    ) -> None:
        try:
            info = read_teacher_config(cfg.teacher)
        except TeacherError as e:
            raise ConfigError(f"distill.teacher: {e}") from None
        if shards is not None:  # the teacher reads the shards' ids as its own tokens
            check_same_tokenizer(
                file_tokenizer(f"distill.teacher={cfg.teacher}", info.tokenizer),
                shards,
                info.vocab_size,
                ConfigError,
                note=warn if verbose else None,
            )
        if info.vocab_size != student.vocab_size:
            raise ConfigError(
                f"distill.teacher: vocabulary {info.vocab_size} differs from the student's "
                f"{student.vocab_size}; build the shards with the teacher's tokenizer"
            )
        if cfg.relation_weight > 0 and info.family != "bert":
            raise ConfigError(
                f"distill.relation_weight={cfg.relation_weight}: relations are read from a BERT-family teacher's "
                f"query/key/value projections; this teacher is {info.family} (set it to 0)"
            )
        self.relation_heads = cfg.relation_heads or info.num_heads
        if cfg.relation_weight > 0 and info.hidden_size % self.relation_heads:
            raise ConfigError(f"distill.relation_heads={cfg.relation_heads}: must divide the width {info.hidden_size}")
        for name in ("hidden_weight", "pooled_weight", "relation_weight"):
            if getattr(cfg, name) > 0 and info.hidden_size != student.hidden_size:
                raise ConfigError(
                    f"distill.{name}={getattr(cfg, name)}: the teacher's width {info.hidden_size} "
                    f"differs from the student's {student.hidden_size} (set it to 0)"
                )
        n_hidden = student.num_groups * (student.group_depth if cfg.hidden_at == "application" else 1)
        self.layers = (
            list(cfg.layers)
            or init_layers(init_from, student.num_groups, student.group_depth, cfg.hidden_at)
            or layer_map(n_hidden, info.num_layers)
        )
        if len(self.layers) != n_hidden or not all(0 <= t < info.num_layers for t in self.layers):
            raise ConfigError(
                f"distill.layers={list(cfg.layers)}: need {n_hidden} teacher layers in [0, {info.num_layers}) "
                f"(one per student {cfg.hidden_at}: distill.hidden_at={cfg.hidden_at})"
            )
        self.cfg, self.device = cfg, device
        self.kl_on = cfg.kl_weight > 0 and info.has_mlm_head
        from transformers import AutoModel, AutoModelForMaskedLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        cls = AutoModelForMaskedLM if info.has_mlm_head else AutoModel
        self.model = cls.from_pretrained(cfg.teacher).to(device=device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self._qkv: list[torch.Tensor] = []
        if cfg.relation_weight > 0:  # the last layer's query, key and value projections, as they run
            attn = self.model.base_model.encoder.layer[-1].attention.self
            for proj in (attn.query, attn.key, attn.value):
                proj.register_forward_hook(lambda _m, _i, out: self._qkv.append(out))
        max_pos = getattr(self.model.config, "max_position_embeddings", None)
        if max_pos is not None and seq_len > max_pos:
            raise ConfigError(f"distill.teacher: samples of {seq_len} tokens exceed the teacher's {max_pos} positions")
        if verbose:
            kl = "on" if self.kl_on else "off (the teacher has no MLM head)" if cfg.kl_weight > 0 else "off"
            print(
                f"distill: {info.family} teacher {cfg.teacher} ({type(self.model).__name__}), student "
                f"{cfg.hidden_at} -> teacher layer {self.layers}; hidden-state cosine weight {cfg.hidden_weight}; "
                f"MLM weight {cfg.mlm_weight}; "
                f"pooled-embedding cosine weight {cfg.pooled_weight}; "
                f"logit KL {kl} (tau {cfg.temperature})"
                + (
                    f"; attention relations weight {cfg.relation_weight} ({self.relation_heads} heads, last layer)"
                    if cfg.relation_weight > 0
                    else ""
                )
            )

    @torch.no_grad()
    def run(
        self, input_ids_T: torch.Tensor, cu_seqlens: torch.Tensor, mlm_positions: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Teacher hidden states at the mapped layers ([T, d] each), masked-token logits [M, V] (or None),
        each document's mean-pooled last hidden state [N, d] (or None when ``pooled_weight`` is 0) and the
        last layer's query, key and value [T, 3d] (or None when ``relation_weight`` is 0)."""
        cu = cu_seqlens.long()
        lens = cu[1:] - cu[:-1]
        B, L = len(lens), int(lens.max())
        pos_T = torch.arange(input_ids_T.shape[0], device=input_ids_T.device) - torch.repeat_interleave(cu[:-1], lens)
        row_T = torch.repeat_interleave(torch.arange(B, device=input_ids_T.device), lens)
        ids = input_ids_T.new_zeros(B, L).index_put_((row_T, pos_T), input_ids_T)
        mask = torch.zeros(B, L, dtype=torch.long, device=ids.device).index_put_((row_T, pos_T), torch.ones_like(pos_T))
        self._qkv.clear()
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = [out.hidden_states[t + 1][row_T, pos_T].float() for t in self.layers]
        logits = out.logits[row_T, pos_T][mlm_positions].float() if self.kl_on else None
        pooled_BD = None
        if self.cfg.pooled_weight > 0:
            last_BLD = out.hidden_states[-1].float() * mask[..., None]
            pooled_BD = last_BLD.sum(1) / lens[:, None]
        qkv_T3D = torch.cat([x[row_T, pos_T].float() for x in self._qkv], -1) if self._qkv else None
        return hidden, logits, pooled_BD, qkv_T3D


def hidden_cosine_sum(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Σ over tokens of the mean over groups of 1 - cos(student, teacher)."""
    per_group = [(1 - F.cosine_similarity(s.float(), t, dim=-1)).sum() for s, t in zip(student, teacher)]
    return torch.stack(per_group).mean()


def pooled_cosine_sum(student_TD: torch.Tensor, teacher_ND: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Σ over documents of (its tokens) · (1 - cos(mean-pooled student, teacher's pooled vector))."""
    lens_N = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    student_ND = pool(student_TD.float(), cu_seqlens, "mean")
    return (lens_N * (1 - F.cosine_similarity(student_ND, teacher_ND, dim=-1))).sum()


def relation_kl_sum(
    student_T3D: torch.Tensor, teacher_T3D: torch.Tensor, cu_seqlens: torch.Tensor, heads: int
) -> torch.Tensor:
    """Σ over tokens of the mean over the Q-Q, K-K, V-V relations and the ``heads`` relation heads of
    KL(teacher ‖ student) between the token's rows of softmax(X Xᵀ / √d_r) within its document.
    student_T3D, teacher_T3D: [T, 3D] (q | k | v); documents are padded into [N, heads, L, d_r] rows."""
    cu = cu_seqlens.long()
    lens = cu[1:] - cu[:-1]
    N, L = len(lens), int(lens.max())
    T, D3 = student_T3D.shape
    D, dr = D3 // 3, D3 // 3 // heads
    pos_T = torch.arange(T, device=cu.device) - torch.repeat_interleave(cu[:-1], lens)
    row_T = torch.repeat_interleave(torch.arange(N, device=cu.device), lens)
    valid_NL = torch.zeros(N, L, dtype=torch.bool, device=cu.device).index_put_((row_T, pos_T), torch.tensor(True))
    key_mask = ~valid_NL[:, None, None, :]  # [N, 1, 1, L]: padding keys get no weight

    def log_relations(x_TD: torch.Tensor) -> torch.Tensor:  # [N, heads, L, L]
        x_NLD = x_TD.new_zeros(N, L, D).index_put_((row_T, pos_T), x_TD)
        x_NHLd = x_NLD.view(N, L, heads, dr).transpose(1, 2)
        scores = (x_NHLd @ x_NHLd.transpose(-1, -2)) / dr**0.5
        return F.log_softmax(scores.masked_fill(key_mask, float("-inf")), dim=-1)

    total = student_T3D.new_zeros((), dtype=torch.float32)
    for i in range(3):
        s = log_relations(student_T3D[:, i * D : (i + 1) * D].float())
        t = log_relations(teacher_T3D[:, i * D : (i + 1) * D].float())
        kl_NHL = (t.exp() * (t - s)).masked_fill(key_mask, 0.0).sum(-1)  # per query row
        total = total + kl_NHL.mean(1)[valid_NL].sum()  # mean over heads, sum over real query tokens
    return total / 3


def kl_sum(student_MV: torch.Tensor, teacher_MV: torch.Tensor, temperature: float) -> torch.Tensor:
    """Σ over masked tokens of τ²·KL(softmax(teacher/τ) || softmax(student/τ))."""
    t = F.log_softmax(teacher_MV / temperature, dim=-1)
    s = F.log_softmax(student_MV.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum() * temperature**2
