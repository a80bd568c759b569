"""The native model directory every tool reads and writes.

A native directory (what ``consolidate_checkpoint.py`` and ``merge_experts.py`` write)::

    config.json         {"format": "modernalbert-native", "model_type": "modernalbert", "model": ModelConfig
                         fields, "tokenizer": file name, "tokenizer_sha256": its sha256 (as index.json records a
                         shard build's; absent in older directories), "data_dir": shards it was trained on,
                         "history": [what each tool did]}
    model.safetensors   the ``ModernAlbertForMaskedLM`` state dict, full tensors, fp32
    tokenizer.model     (or tokenizer.json) the tokenizer the data was built with

A fine-tuned classifier (``evaluation/glue.py --save-model``) is the same directory plus a
``"classifier"`` entry in config.json (``ClassifierConfig``: labels, pooling) and the head's
``classifier.*`` tensors in model.safetensors: ``load_native`` still gives the masked LM,
``load_native_classifier`` the encoder with its head.

``model_type`` is there for transformers and the Hub, which identify any config.json by it (``AutoConfig``
now names the type it has no class for, where it said the key was missing); the weights carry the names of
the custom-code HF export's classes, whose model_type it is. This project tells the two apart by ``format``
and reads directories written before the field the same way.

Tools write it through ``fileio.OutputDir`` (all or nothing: a failing tool leaves no partial directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import torch

from model.classification import ClassifierConfig, ModernAlbertForSequenceClassification
from config_check import ConfigError
from fileio import sha256_file
from model.config import ModelConfig
from model.modernalbert import ModernAlbertForMaskedLM

FORMAT = "modernalbert-native"
MODEL_TYPE = "modernalbert"  # config.json's model_type, here and in the custom-code HF export
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# what a sentence-transformers model declares about its sentence embedding (pooling, max_seq_length):
# init_from_teacher copies the teacher's, and consolidation, merging and the HF export carry them on, so a
# student embeds the way its teacher does (evaluation/embedder.py reads them)
SENTENCE_FILES = (os.path.join("1_Pooling", "config.json"), "sentence_bert_config.json")


class InputError(RuntimeError):
    """Bad input (a directory, a file, an option): the CLIs print it as one line and exit with code 2."""


def tokenizer_file(directory: str) -> str | None:
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(directory, name)):
            return name
    return None


def copy_sentence_files(src_dir: str | None, out_dir: str) -> list[str]:
    """Copy the ``SENTENCE_FILES`` that ``src_dir`` has into ``out_dir``; returns the names copied."""
    copied = []
    for name in SENTENCE_FILES:
        src = os.path.join(src_dir, name) if src_dir else ""
        if src and os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(out_dir, name)), exist_ok=True)
            shutil.copyfile(src, os.path.join(out_dir, name))
            copied.append(name)
    return copied


def tokenizer_record(in_dir: str, doc: dict) -> tuple[str | None, str | None]:
    """The directory's tokenizer file (None: it ships none) and the sha256 config.json records of it (None: an
    older directory, written before it was recorded); ``data_prep.tokenizer_id`` compares them."""
    name = doc.get("tokenizer")
    return (os.path.join(in_dir, name) if name else None), doc.get("tokenizer_sha256")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, with the file mode the umask gives (safetensors creates 0600, which a
    cluster group could not read while every other file of an export is 0644)."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    follow_umask(path)


def follow_umask(*paths: str) -> None:
    """Give files the mode a plain ``open`` would (0666 less the umask): safetensors writes 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o666 & ~umask)


def save_native(
    out_dir: str,
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    tokenizer_src: str | None,
    data_dir: str | None,
    history: list[dict],
    classifier: ClassifierConfig | None = None,
) -> None:
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in state.items()}
    save_safetensors(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": FORMAT})
    tok_name = tok_sha = None
    if tokenizer_src is not None:
        tok_name = os.path.basename(tokenizer_src)
        shutil.copyfile(tokenizer_src, os.path.join(out_dir, tok_name))
        tok_sha = sha256_file(os.path.join(out_dir, tok_name))
    doc = {
        "format": FORMAT,
        "format_version": 1,
        "model_type": MODEL_TYPE,
        "model": cfg.to_dict(),
        "tokenizer": tok_name,
        "tokenizer_sha256": tok_sha,
        "data_dir": data_dir,
        "history": history,
    }
    if classifier is not None:
        doc["classifier"] = dataclasses.asdict(classifier.validate())
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)


def read_json(path: str) -> dict:
    """A JSON file, or a InputError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None


def read_config(in_dir: str) -> dict:
    path = os.path.join(in_dir, "config.json")
    if not os.path.isdir(in_dir):
        raise InputError(f"{in_dir}: no such directory")
    if not os.path.isfile(path):
        raise InputError(
            f"{in_dir}: not a native model directory (no config.json; make one with tools/consolidate_checkpoint.py)"
        )
    doc = read_json(path)
    if doc.get("format") != FORMAT:
        if "model_type" in doc:
            raise InputError(
                f"{in_dir}: a HuggingFace model directory (model_type {doc['model_type']!r}); this tool "
                "takes a native model directory (tools/consolidate_checkpoint.py writes one)"
            )
        raise InputError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc


def _read_weights(in_dir: str) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = os.path.join(in_dir, "model.safetensors")
    if not os.path.isfile(weights):
        raise InputError(f"{in_dir}: no model.safetensors")
    try:
        return load_file(weights), weights
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{weights}: not a readable safetensors file ({e})") from None


def classifier_config(doc: dict) -> ClassifierConfig | None:
    """The directory's classification head config, or None for a plain pretrained model."""
    if "classifier" not in doc:
        return None
    try:
        return ClassifierConfig(**doc["classifier"]).validate()
    except (TypeError, ConfigError) as e:
        raise InputError(f'config.json: bad "classifier" entry ({e})') from None


def _mlm(doc: dict, state: dict[str, torch.Tensor], weights: str) -> ModernAlbertForMaskedLM:
    if "classifier" in doc:  # the head's tensors belong to the classifier, not to the masked LM
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model = ModernAlbertForMaskedLM(ModelConfig.from_dict(doc["model"]))
    check_keys(model.state_dict(), state, weights)
    model.load_state_dict(state)
    return model.eval()


def _classifier(
    doc: dict, head: ClassifierConfig, state: dict[str, torch.Tensor], weights: str
) -> ModernAlbertForSequenceClassification:
    model = ModernAlbertForSequenceClassification(ModelConfig.from_dict(doc["model"]), head)
    state = {k: v for k, v in state.items() if k.startswith(("model.", "classifier."))}
    check_keys(model.state_dict(), state, weights)
    model.load_state_dict(state)
    return model.eval()


def load_native(in_dir: str) -> tuple[ModernAlbertForMaskedLM, dict]:
    """The masked LM (eval mode, CPU, fp32) and its config.json; every key must match exactly (a
    classifier directory's ``classifier.*`` tensors are left to ``load_native_classifier``)."""
    doc = read_config(in_dir)
    classifier_config(doc)  # a malformed head entry is an error here too
    return _mlm(doc, *_read_weights(in_dir)), doc


def load_native_classifier(in_dir: str) -> tuple[ModernAlbertForSequenceClassification, dict]:
    """A fine-tuned classifier directory: the encoder and its head (strict), eval mode, fp32."""
    doc = read_config(in_dir)
    head = classifier_config(doc)
    if head is None:
        raise InputError(
            f"{in_dir}: no classification head in config.json (a pretrained model; fine-tune it "
            "first, e.g. python -m evaluation.glue --save-model)"
        )
    return _classifier(doc, head, *_read_weights(in_dir)), doc


def load_native_all(in_dir: str) -> tuple[ModernAlbertForMaskedLM, ModernAlbertForSequenceClassification | None, dict]:
    """Both models of a directory from one read of its weights: the masked LM, the classifier (None
    without a head) and config.json."""
    doc = read_config(in_dir)
    head = classifier_config(doc)
    state, weights = _read_weights(in_dir)
    return _mlm(doc, state, weights), (_classifier(doc, head, state, weights) if head else None), doc


def check_keys(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], where: str) -> None:
    """Strict key and shape accounting: a missing, unexpected or misshapen tensor is an error."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{where}: key mismatch: missing {missing[:5]}{'…' if len(missing) > 5 else ''} "
            f"({len(missing)}), unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''} "
            f"({len(unexpected)})"
        )
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(got[k].shape)]
    if bad:
        k = bad[0]
        raise InputError(
            f"{where}: {len(bad)} tensors with the wrong shape, e.g. {k}: "
            f"{tuple(got[k].shape)} instead of {tuple(expected[k].shape)}"
        )
