"""Convert a native model directory to a HuggingFace model directory, and check its logits.

    python tools/convert_to_hf.py runs/quickstart/native --out runs/quickstart/hf
    python tools/convert_to_hf.py runs/quickstart/folded --out runs/quickstart/hf-modernbert --format modernbert

Formats:
  modernalbert  HF classes for the native model (ModernAlbertModel, …ForMaskedLM, …ForSequenceClassification)
                with their code saved beside the weights (``auto_map``): load with
                ``AutoModelForMaskedLM.from_pretrained(DIR, trust_remote_code=True)``. One weight set per
                recursive group, MoL experts kept. Works for any native model.
  modernbert    a stock ``ModernBertForMaskedLM`` (plain transformers, no custom code): the groups are
                unrolled into L layers and the factorised embedding E·Pᵀ is folded into one V×d table (the
                tied decoder). Only for a model without MoL/LoRA-Mixer experts: run
                ``tools/merge_experts.py --fold`` first.
  albert        a stock ``AlbertForMaskedLM`` for a BERT-family student (``tools/init_from_teacher.py``
                from a BERT/MiniLM/E5/BGE/GTE teacher: post-norm, biases, absolute positions, GELU, full
                attention): ALBERT's ``num_hidden_groups`` shares consecutive layers exactly as our
                recursive groups do, so the K unique blocks stay K. ALBERT normalises the embedding before
                its projection, ours after, so the table is folded to V×d (E·Pᵀ) and ALBERT's projection
                is the identity. Experts must be folded first, as for modernbert.

The tokenizer is saved as a stock fast tokenizer (``PreTrainedTokenizerFast``, no tokenizer code) whose
``model_max_length`` is the model's position count (``model.max_position_embeddings``, which every format's
config.json declares as its ``max_position_embeddings``; see ``--max-length``), so ``tok(text, truncation=True)``
gives what the model takes. The stock formats load it with ``AutoTokenizer.from_pretrained(DIR)``. For the
modernalbert format, transformers 5's ``AutoTokenizer`` reads the model's config.json first, and that config is
custom code: pass the model's ``trust_remote_code=True`` there too (no tokenizer code runs; without it
transformers asks, and on "no" or a closed stdin loads the same tokenizer), or use
``PreTrainedTokenizerFast.from_pretrained(DIR)``. ``--verify`` (on by default) loads the written directory with
transformers and compares its logits with the native model's on real text (documents of the shipped sample
corpus, padded batch): the max abs difference is printed, and above ``--tolerance`` (1e-4) nothing is written.

A fine-tuned classifier directory (``python -m evaluation.glue --save-model``) exports with its head:
``AutoModelForSequenceClassification.from_pretrained(DIR[, trust_remote_code=True])`` gives the native
classifier's logits (verified too). The modernalbert format keeps the MLM head beside it; the stock
modernbert format is a ``ModernBertForSequenceClassification`` (classifier only).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys


import torch

from model.classification import ClassifierConfig, ModernAlbertForSequenceClassification
from model.config import BERT_BLOCK, MODERN_BLOCK, ModelConfig
from model.modernalbert import ModernAlbertForMaskedLM
from fileio import OutputDir
from model.native_format import (
    MODEL_TYPE,
    InputError,
    copy_sentence_files,
    follow_umask,
    load_native_all,
    tokenizer_record,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("modernalbert", "modernbert", "albert")
# model/ files copied next to the HF classes, and the names they get there
NATIVE_SOURCES = {
    "config": "modernalbert_config",
    "attention": "modernalbert_attention",
    "routing": "modernalbert_routing",
    "mol": "modernalbert_mol",
    "lora_mixer": "modernalbert_lora_mixer",
    "modernalbert": "modernalbert_native",
    "classification": "modernalbert_classification",
    "init": "modernalbert_init",
}
AUTO_MAP = {
    "AutoConfig": "configuration_modernalbert.ModernAlbertConfig",
    "AutoModel": "modeling_modernalbert.ModernAlbertModel",
    "AutoModelForMaskedLM": "modeling_modernalbert.ModernAlbertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_modernalbert.ModernAlbertForSequenceClassification",
}


def _special_ids(doc: dict, in_dir: str, model: ModernAlbertForMaskedLM) -> dict[str, int]:
    """The special ids of the directory's tokenizer, once it is checked to be the model's: the sha256 config.json
    recorded (``data_prep.tokenizer_id``), ids within the model's vocabulary."""
    from data_prep.tokenizer_id import shipped_tokenizer

    path, recorded = tokenizer_record(in_dir, doc)
    assert path is not None  # main refuses a directory without one
    return shipped_tokenizer(in_dir, path, recorded, model.cfg.vocab_size, InputError).special_ids.as_dict()


def _label_fields(head: ClassifierConfig) -> dict:
    names = head.labels or [f"LABEL_{i}" for i in range(head.num_labels)]
    return {
        "num_labels": head.num_labels,
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "classifier_pooling": head.pooling,
        "classifier_dropout": head.dropout,
        "problem_type": "regression" if head.is_regression else "single_label_classification",
    }


def write_modernalbert(
    model: ModernAlbertForMaskedLM,
    special: dict[str, int],
    out: str,
    clf: ModernAlbertForSequenceClassification | None = None,
    positions: int | None = None,
) -> None:
    from model.native_format import save_safetensors

    # the export needs nothing of the project: model/'s files and the config checks they import, imports made relative
    sources = {os.path.join("model", f"{src}.py"): dst for src, dst in NATIVE_SOURCES.items()}
    sources[os.path.join("config_check", "__init__.py")] = "modernalbert_config_check"
    for path, dst in sources.items():
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            code = f.read()
        code = re.sub(
            r"^(\s*)from model\.(\w+) import",
            lambda m: f"{m.group(1)}from .{NATIVE_SOURCES[m.group(2)]} import",
            code,
            flags=re.M,
        )
        code = re.sub(r"^(\s*)from config_check import", r"\1from .modernalbert_config_check import", code, flags=re.M)
        with open(os.path.join(out, f"{dst}.py"), "w", encoding="utf-8") as f:
            f.write(f"# Copied from the ModernALBERT project's {path} by tools/convert_to_hf.py.\n{code}")
    for name in ("configuration_modernalbert.py", "modeling_modernalbert.py"):
        shutil.copyfile(os.path.join(REPO, "tools", "hf_modernalbert", name), os.path.join(out, name))
    import transformers

    config = {
        **model.cfg.to_dict(),
        "max_position_embeddings": positions or model.cfg.max_position_embeddings,  # RoPE: declared only
        "model_type": MODEL_TYPE,
        "architectures": ["ModernAlbertForMaskedLM"],
        "auto_map": AUTO_MAP,
        "pad_token_id": special["pad"],
        "cls_token_id": special["cls"],
        "sep_token_id": special["sep"],
        "mask_token_id": special["mask"],
        "torch_dtype": "float32",
        "transformers_version": transformers.__version__,
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if clf is not None:  # the fine-tuned encoder with its head; the MLM head stays for fill-mask
        config.update(_label_fields(clf.head_cfg), architectures=["ModernAlbertForSequenceClassification"])
        state.update({k: v.detach().contiguous() for k, v in clf.state_dict().items()})
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=1)
    save_safetensors(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def declared_lengths(cfg: ModelConfig, max_length: int | None = None, trained: int | None = None) -> tuple[int, int]:
    """(the ``max_position_embeddings`` the export's config.json declares, its tokenizer's ``model_max_length``).

    Both are the model's ``max_position_embeddings`` unless ``--max-length`` says otherwise. Absolute positions:
    the table's rows, which the config must keep; a shorter ``--max-length`` shortens the tokenizer only, a
    longer one is refused. RoPE has no table (the field is a declared length, 512 unless the model config set
    one): ``--max-length`` is then what the config and the tokenizer both declare, and without it the longer of
    that field and ``trained``, the sample length of the shards the model was trained on (a 1024-token
    model must not be exported as a 512-token one)."""
    positions = cfg.max_position_embeddings
    if max_length is None:
        if cfg.position_embedding != "absolute" and trained:
            positions = max(positions, trained)
        return positions, positions
    absolute = cfg.position_embedding == "absolute"
    if max_length < 1 or (absolute and max_length > positions):
        allowed = f"1 to {positions} (model.max_position_embeddings, absolute positions)" if absolute else ">= 1"
        raise InputError(f"--max-length {max_length}: allowed: {allowed}")
    return (positions if absolute else max_length), max_length


def trained_length(doc: dict) -> int | None:
    """The sample length (index.json's seq_len) of the shards the native model records it was trained on, when
    they are still a local directory; None otherwise."""
    data_dir = doc.get("data_dir")
    if not data_dir or "://" in str(data_dir):
        return None
    try:
        with open(os.path.join(data_dir, "index.json"), encoding="utf-8") as f:
            return int(json.load(f)["seq_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _no_experts(cfg, fmt: str) -> None:
    if cfg.mol.groups or cfg.attn_experts.groups:
        raise InputError(
            f"--format {fmt} needs a model without experts (model.mol.groups="
            f"{list(cfg.mol.groups)}, attn_experts.groups={list(cfg.attn_experts.groups)}): run "
            + (
                "tools/merge_experts.py --fold first"
                if cfg.mol.groups
                else "tools/merge_mixer.py on the LoRA-Mixer run first (--method routing or uniform)"
            )
            + ", or use --format modernalbert"
        )


def _block_is(cfg, fields: dict, fmt: str, other: str) -> None:
    bad = [f"{k}={getattr(cfg, k)!r}" for k, v in fields.items() if getattr(cfg, k) != v]
    if bad:
        raise InputError(
            f"--format {fmt} needs the {'BERT-family' if fields is BERT_BLOCK else 'ModernBERT-style'} "
            f"block, this model has {', '.join(bad)}: use --format {other} or modernalbert"
        )


def albert_state(model: ModernAlbertForMaskedLM) -> dict[str, torch.Tensor]:
    """The native weights in AlbertForMaskedLM's names: group g → albert_layer_groups.g (shared by G layers)."""
    cfg, enc = model.cfg, model.model
    _no_experts(cfg, "albert")
    _block_is(cfg, BERT_BLOCK, "albert", "modernbert")
    if (
        not all(cfg.is_global(i) for i in range(cfg.num_layers))
        and cfg.local_window // 2 < cfg.max_position_embeddings - 1
    ):
        raise InputError(
            f"--format albert needs full attention in every layer (model.global_every="
            f"{cfg.global_every}, local_window={cfg.local_window}): use --format modernalbert"
        )
    d, emb = cfg.hidden_size, enc.embeddings
    sd = {
        "albert.embeddings.word_embeddings.weight": model.decoder_weight(),
        "albert.embeddings.position_embeddings.weight": emb.pos_embeddings.weight,
        # token type 0 is folded into the positions (model/teacher.py); both rows are zero
        "albert.embeddings.token_type_embeddings.weight": torch.zeros(2, d),
        "albert.embeddings.LayerNorm.weight": emb.norm.weight,
        "albert.embeddings.LayerNorm.bias": emb.norm.bias,
        "albert.encoder.embedding_hidden_mapping_in.weight": torch.eye(d),
        "albert.encoder.embedding_hidden_mapping_in.bias": torch.zeros(d),
        "predictions.dense.weight": model.head.dense.weight,
        "predictions.dense.bias": model.head.dense.bias,
        "predictions.LayerNorm.weight": model.head.norm.weight,
        "predictions.LayerNorm.bias": model.head.norm.bias,
        "predictions.bias": model.decoder_bias,
        "predictions.decoder.bias": model.decoder_bias,
    }
    for g, group in enumerate(enc.groups):
        b, p = group.block, f"albert.encoder.albert_layer_groups.{g}.albert_layers.0."
        for kind in ("weight", "bias"):
            for name, w in zip(("query", "key", "value"), getattr(b.attn.Wqkv, kind).chunk(3)):
                sd[p + f"attention.{name}.{kind}"] = w
            sd[p + f"attention.dense.{kind}"] = getattr(b.attn.Wo, kind)
            sd[p + f"attention.LayerNorm.{kind}"] = getattr(b.attn_norm, kind)
            sd[p + f"ffn.{kind}"] = getattr(b.ffn.Wi, kind)
            sd[p + f"ffn_output.{kind}"] = getattr(b.ffn.Wo, kind)
            sd[p + f"full_layer_layer_norm.{kind}"] = getattr(b.ffn_norm, kind)
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def write_albert(
    model: ModernAlbertForMaskedLM,
    special: dict[str, int],
    out: str,
    clf: ModernAlbertForSequenceClassification | None = None,
    positions: int | None = None,
) -> None:
    from transformers import AlbertConfig, AlbertForMaskedLM

    if clf is not None:  # AlbertForSequenceClassification puts a tanh pooler + linear on [CLS]: not our head
        raise InputError(
            "--format albert exports the masked-LM model only; export a classifier with --format modernalbert"
        )
    c = model.cfg
    hf_cfg = AlbertConfig(
        vocab_size=c.vocab_size,
        embedding_size=c.hidden_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers,
        num_hidden_groups=c.num_groups,
        inner_group_num=1,
        num_attention_heads=c.num_heads,
        intermediate_size=c.intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=c.embedding_dropout,
        attention_probs_dropout_prob=c.attention_dropout,
        max_position_embeddings=c.max_position_embeddings,  # the table's rows (declared_lengths keeps them)
        type_vocab_size=2,
        layer_norm_eps=c.norm_eps,
        initializer_range=c.init_std,
        pad_token_id=special["pad"],
        bos_token_id=special["cls"],
        eos_token_id=special["sep"],
        tie_word_embeddings=True,
    )
    hf = AlbertForMaskedLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(albert_state(model), strict=False)
    missing = [k for k in missing if k != "predictions.decoder.weight"]  # tied to the word embeddings
    if missing or unexpected:
        raise InputError(f"ALBERT key mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    hf.save_pretrained(out)
    follow_umask(*glob.glob(os.path.join(out, "*.safetensors")))


def modernbert_state(model: ModernAlbertForMaskedLM) -> dict[str, torch.Tensor]:
    """The native weights unrolled into ModernBertForMaskedLM's names (layer i ← group i // G)."""
    cfg, enc = model.cfg, model.model
    _no_experts(cfg, "modernbert")
    _block_is(cfg, MODERN_BLOCK, "modernbert", "albert")
    sd = {
        "model.embeddings.tok_embeddings.weight": model.decoder_weight(),
        "model.embeddings.norm.weight": enc.embeddings.norm.weight,
        "model.final_norm.weight": enc.final_norm.weight,
        "head.dense.weight": model.head.dense.weight,
        "head.norm.weight": model.head.norm.weight,
        "decoder.bias": model.decoder_bias,
    }
    for i in range(cfg.num_layers):
        block, p = enc.groups[i // cfg.group_depth].block, f"model.layers.{i}."
        if i > 0:  # ModernBERT's layer 0 has no attention norm, like ours
            sd[p + "attn_norm.weight"] = block.attn_norm.weight
        sd[p + "attn.Wqkv.weight"] = block.attn.Wqkv.weight
        sd[p + "attn.Wo.weight"] = block.attn.Wo.weight
        sd[p + "mlp_norm.weight"] = block.ffn_norm.weight
        sd[p + "mlp.Wi.weight"] = block.ffn.Wi.weight
        sd[p + "mlp.Wo.weight"] = block.ffn.Wo.weight
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def write_modernbert(
    model: ModernAlbertForMaskedLM,
    special: dict[str, int],
    out: str,
    clf: ModernAlbertForSequenceClassification | None = None,
    positions: int | None = None,
) -> None:
    from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification

    c = model.cfg
    hf_cfg = ModernBertConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        hidden_activation="gelu",
        norm_eps=c.norm_eps,
        norm_bias=False,
        attention_bias=False,
        mlp_bias=False,
        classifier_bias=False,
        classifier_activation="gelu",
        decoder_bias=True,
        tie_word_embeddings=True,
        global_attn_every_n_layers=c.global_every,
        local_attention=c.local_window,
        global_rope_theta=c.rope_theta_global,
        local_rope_theta=c.rope_theta_local,
        embedding_dropout=c.embedding_dropout,
        attention_dropout=c.attention_dropout,
        pad_token_id=special["pad"],
        cls_token_id=special["cls"],
        sep_token_id=special["sep"],
        bos_token_id=special["cls"],
        eos_token_id=special["sep"],
        initializer_range=c.init_std,
        max_position_embeddings=positions or c.max_position_embeddings,  # not ModernBERT's 8192
        **(_label_fields(clf.head_cfg) if clf is not None else {}),
    )
    state = modernbert_state(model)
    if clf is not None:
        # stock ModernBertForSequenceClassification: its `head` is our classifier's dense + norm, its
        # `classifier` our output layer (one checkpoint cannot hold the MLM head under the same names)
        head = clf.classifier
        state = {k: v for k, v in state.items() if k.startswith("model.")}
        state.update(
            {
                "head.dense.weight": head.dense.weight,
                "head.norm.weight": head.norm.weight,
                "classifier.weight": head.out.weight,
                "classifier.bias": head.out.bias,
            }
        )
        state = {k: v.detach().clone().contiguous() for k, v in state.items()}
        hf = ModernBertForSequenceClassification(hf_cfg)
        missing, unexpected = hf.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise InputError(f"ModernBERT key mismatch: missing {missing}, unexpected {unexpected}")
        hf.save_pretrained(out)
        follow_umask(*glob.glob(os.path.join(out, "*.safetensors")))
        return
    hf = ModernBertForMaskedLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "decoder.weight"]  # tied to the embedding
    if missing or unexpected:
        raise InputError(f"ModernBERT key mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    hf.save_pretrained(out)
    follow_umask(*glob.glob(os.path.join(out, "*.safetensors")))  # transformers' safetensors writes 0600


def sample_batch(doc: dict, in_dir: str, n_docs: int = 6, max_len: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    """Real text: documents of the shipped corpus, tokenised by the model's tokenizer, right-padded."""
    from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
    from data_prep.tokenizer import Tokenizer

    tok = Tokenizer(os.path.join(in_dir, doc["tokenizer"]))
    docs = []
    for text in CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR])):
        if len(text) > 200:
            docs.append(text)
        if len(docs) == n_docs:
            break
    sid = tok.special_ids
    seqs = [[sid.cls, *ids[: max_len - 2 - 9 * i], sid.sep] for i, ids in enumerate(tok.encode(docs))]
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), sid.pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), S, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A right-padded [B, S] batch as the native models take it: flat ids [T], cu_seqlens [B+1], max_seqlen."""
    lens = mask.sum(1)
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    return ids[mask.bool()], cu, int(lens.max())


@torch.no_grad()
def native_logits(model: ModernAlbertForMaskedLM, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits at every real position, in row-major order of the padded batch: [T, V]."""
    flat, cu, max_len = unpadded(ids, mask)
    return model(flat, cu, max_len, torch.arange(len(flat))).logits


@torch.no_grad()
def native_class_logits(
    clf: ModernAlbertForSequenceClassification, ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Classifier logits [B, C] of the padded batch."""
    return clf(*unpadded(ids, mask))


@torch.no_grad()
def verify(
    model: ModernAlbertForMaskedLM,
    doc: dict,
    in_dir: str,
    out: str,
    fmt: str,
    clf: ModernAlbertForSequenceClassification | None = None,
) -> dict[str, float]:
    """Max abs logit difference HF vs native, per head: {"masked-lm": …, "sequence-classification": …}."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    ids, mask = sample_batch(doc, in_dir)
    remote = fmt == "modernalbert"
    diffs = {}
    if clf is None or fmt == "modernalbert":
        hf = AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=remote).eval()
        got = hf(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        diffs["masked-lm"] = float((got.float() - native_logits(model, ids, mask)).abs().max())
    if clf is not None:
        hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=remote).eval()
        got = hf(input_ids=ids, attention_mask=mask).logits
        diffs["sequence-classification"] = float((got.float() - native_class_logits(clf, ids, mask)).abs().max())
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/convert_to_hf.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("in_dir", help="native model directory (consolidate_checkpoint.py or merge_experts.py output)")
    p.add_argument("--out", required=True, help="HF model directory to write")
    p.add_argument("--format", choices=FORMATS, default="modernalbert")
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the HF model's logits with the native model's (default: on)",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference allowed (fp32)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="the tokenizer's model_max_length (default: the model's max_position_embeddings; with absolute "
        "positions at most that; with RoPE also the max_position_embeddings the export declares)",
    )
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from tools.hf_tokenizer import save_hf_tokenizer

    hf_logging.disable_progress_bar()
    try:
        model, clf, doc = load_native_all(a.in_dir)
        if not doc.get("tokenizer"):
            raise InputError(f"{a.in_dir}: no tokenizer in the model directory; the HF export needs one")
        special = _special_ids(doc, a.in_dir, model)
        positions, max_length = declared_lengths(model.cfg, a.max_length, trained_length(doc))
        if a.format != "modernalbert":  # refuse a model the stock class cannot hold before anything is written
            (modernbert_state if a.format == "modernbert" else albert_state)(model)
        writer = {"modernalbert": write_modernalbert, "modernbert": write_modernbert, "albert": write_albert}[a.format]
        with OutputDir(a.out, a.overwrite, InputError) as tmp:
            writer(model, special, tmp, clf, positions)
            save_hf_tokenizer(os.path.join(a.in_dir, doc["tokenizer"]), special, tmp, max_length)
            copy_sentence_files(a.in_dir, tmp)  # pooling and length, for evaluation/embedder.py
            if a.verify:
                for head, diff in verify(model, doc, a.in_dir, tmp, a.format, clf).items():
                    print(
                        f"verify: max |logits_hf - logits_native| = {diff:.2e} on real text, {head} "
                        f"(tolerance {a.tolerance:g})"
                    )
                    if not diff <= a.tolerance:
                        raise InputError(
                            f"the exported model's {head} logits differ by {diff:.3e} > --tolerance "
                            f"{a.tolerance:g}; nothing written"
                        )
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    auto = "AutoModelForSequenceClassification" if clf is not None else "AutoModelForMaskedLM"
    how = (
        f"{auto}.from_pretrained(DIR, trust_remote_code=True)"
        if a.format == "modernalbert"
        else f"{auto}.from_pretrained(DIR)  # stock {'ModernBERT' if a.format == 'modernbert' else 'ALBERT'}"
    )
    print(f"wrote {a.format} model -> {a.out}\n  load: {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
