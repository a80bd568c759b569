"""The project's tokenizer as a HuggingFace fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json``).

A sentencepiece model (what ``data_prep/build_shards.py`` trains) is rebuilt with the ``tokenizers``
library from its own protobuf: the same pieces and scores (Unigram, byte fallback), the same
normaliser (its precompiled NFKC map, whitespace collapsing, the dummy prefix ▁) and the same digit
splitting; ``tests/test_tools.py`` checks that it gives the sentencepiece ids on the whole shipped
corpus (3 574 documents), except where two segmentations score exactly the same (a run of 49 '*'):
the two libraries break such Viterbi ties differently, into the same pieces in another order. A
``tokenizer.json`` input is used as it is. Either way it is a stock fast tokenizer: ``tokenizer_config.json``
names ``PreTrainedTokenizerFast`` (the name transformers 4 and 5 both know; 5 saves its new alias
``TokenizersBackend``, which 4 cannot load) and has no ``auto_map``, so no tokenizer code ships or runs, and it
adds ``[CLS] … [SEP]`` like the training data. ``model_max_length`` is what the caller gives: the exported
model's position count (``tools/convert_to_hf.py``), so ``truncation=True`` cuts to what the model takes.
"""

from __future__ import annotations

import json
import os

from model.native_format import InputError

TOKENIZER_CLASS = "PreTrainedTokenizerFast"
SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def _from_sentencepiece(path: str):
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = pb.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != pb.TrainerSpec.UNIGRAM:
        raise InputError(
            f"{path}: sentencepiece model type {pb.TrainerSpec.ModelType.Name(spec.model_type)} is not "
            "supported for HF export yet (unigram only; build shards with --tokenizer-type unigram)"
        )
    if spec.treat_whitespace_as_suffix or not spec.split_by_whitespace:
        raise InputError(f"{path}: only sentencepiece models with whitespace-prefix splitting are supported")
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback))
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    pre = [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always" if norm.add_dummy_prefix else "never")]
    if spec.split_digits:
        pre.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    return tok


def save_hf_tokenizer(src: str, special_ids: dict[str, int], out_dir: str, max_length: int) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` into ``out_dir``; ``max_length``: its
    ``model_max_length``."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    if src.endswith(".json"):
        tok = Tokenizer.from_file(src)
        tok.no_truncation()  # max length and padding belong to tokenizer_config / the caller
        tok.no_padding()
    else:
        tok = _from_sentencepiece(src)
    names = {}
    for role, default in SPECIALS.items():
        piece = tok.id_to_token(special_ids[role])
        if piece is None:
            raise InputError(f"{src}: special id {special_ids[role]} ({role}) is not in the vocabulary")
        names[role] = piece
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in names.values()])
    cls, sep = names["cls"], names["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, special_ids["cls"]), (sep, special_ids["sep"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        padding_side="right",
        **{f"{role}_token": piece for role, piece in names.items()},
    )
    fast.save_pretrained(out_dir)
    # a stock class under the name every transformers version resolves, and never a tokenizer auto_map
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.pop("auto_map", None)
    cfg.update(tokenizer_class=TOKENIZER_CLASS, model_max_length=max_length)
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    for stray in ("tokenizer.model",):  # only the fast tokenizer ships
        if os.path.exists(os.path.join(out_dir, stray)):
            os.remove(os.path.join(out_dir, stray))
