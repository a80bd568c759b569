"""SQuAD 2.0: fine-tune an extractive-QA span head on any checkpoint and score it, or score a predictions file.

    python -m evaluation.squad MODEL [MODEL ...] --squad-dir path/to/squad_v2 --out runs/squad/x
    python -m evaluation.squad score DATA.json PREDS.json        # the official SQuAD 2.0 scoring

Data. ``--squad-dir`` holds SQuAD 2.0 JSON files. With the official ``train-v2.0.json`` and
``dev-v2.0.json`` (https://rajpurkar.github.io/SQuAD-explorer/), training reads the first and scoring the
second. With only ``dev-v2.0.json`` (or a copy of some of its articles), it is split by article: the first
``--train-articles`` (25) articles train, the rest are scored. Either way a seeded random
``--holdout-articles`` (3) of the training articles are held out: the null threshold (when to answer "")
is chosen on them, and their EM/F1 after every epoch is what epochs and learning rate are chosen on. The
scored split is read once, at the end.

Model. MODEL is a native model directory (the encoder runs unpadded), a HuggingFace export of one (either
format) or a HuggingFace BERT-family model such as the teacher: ``AutoModelForQuestionAnswering`` where
transformers has one for the model type, else ``AutoModel`` plus the same fresh span head (a linear layer
giving start and end logits per token). Every model sees the same windows: ``[CLS] question [SEP]
context-window [SEP]`` at most ``--max-len`` tokens, the question cut to ``--max-query-len``, long
contexts split into windows overlapping by ``--doc-stride`` tokens (token type 1 on the context where
the model uses token types). A window without the answer is trained toward the [CLS] position (the null
span). Prediction: the best span (start ≤ end, at most ``--max-answer-len`` tokens, inside the context)
over every window of a question, against the null score (the smallest [CLS] start+end score over the
windows); "" when null − span is above the held-out threshold.

Per seed (``--seeds``, default 0,1,2): AdamW, linear warm-up (10 %) and decay, gradient clip 1.0, random
batches of windows of similar length (less padding). Output
in ``--out``: results.json (every seed's held-out history and scores, the median and spread over seeds,
a 95 % bootstrap interval over questions of the seed-averaged EM/F1, timings), results.md (the table, with
the always-"" baseline row), and predictions_<model>_seed<N>.json, which ``score`` re-scores.

``score`` prints one JSON object with exact, f1, total and the HasAns/NoAns parts (0-100), as the official
``evaluate-v2.0.py`` does; PREDS maps question ids to answer texts ("" for no answer); a question without
a prediction is left out of the totals, as the official script does (a note on stderr says how many).
A model directory literally named ``score`` must be given as ``./score``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


from scoring.metrics import summarize
from scoring.intervals import bootstrap_ci
from scoring.squad_metric import aggregate, best_null_threshold, per_question, questions, score
from finetune.loop import FitConfig, fit, steps_per_epoch
from fileio import OutputDir
from model.native_format import InputError, read_json
from config_check import flag_check

NEG = -1e4  # logit of a position that is not a candidate (padding, the question): finite, so CE stays finite


@dataclass(frozen=True)
class SquadRun:
    """One ``python -m evaluation.squad`` run, typed: what the library functions read (``parser()`` names
    each field's flag; ``results.json`` records them as ``args``)."""

    models: tuple[str, ...]
    squad_dir: str
    out: str
    train_articles: int = 25
    holdout_articles: int = 3
    split_seed: int = 0
    max_train: int = 0
    max_holdout: int = 0
    max_eval: int = 0
    holdout_only: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 32
    eval_batch_size: int = 64
    max_len: int = 384
    max_query_len: int = 64
    doc_stride: int = 128
    max_answer_len: int = 30
    threads: int = 0

    def validate(self) -> "SquadRun":
        """``--flag=value: allowed`` (``config_check.check``, as every config) for a value that cannot run."""
        arg = flag_check(self, InputError)

        for name in ("train_articles", "epochs", "batch_size", "eval_batch_size", "max_answer_len"):
            arg(name, getattr(self, name) >= 1, "must be >= 1")
        for name in ("holdout_articles", "max_train", "max_holdout", "max_eval", "threads"):
            arg(name, getattr(self, name) >= 0, "must be >= 0")
        arg("seeds", len(self.seeds) >= 1, "comma-separated integers")
        arg("lr", self.lr > 0, "must be > 0")
        arg("max_query_len", self.max_query_len >= 1, "must be >= 1")
        # [CLS] q [SEP] ctx [SEP]; make_windows names a question that leaves no room for context
        arg("max_len", self.max_len >= 4, "must be >= 4")
        arg("doc_stride", self.doc_stride >= 1, "must be >= 1")
        return self

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "SquadRun":
        """From ``parser()``'s arguments, ``--seeds`` already split into integers."""
        kw = {f.name: getattr(a, f.name) for f in dataclasses.fields(cls)}
        return cls(**{**kw, "models": tuple(a.models), "seeds": tuple(a.seeds)}).validate()


# ---- data --------------------------------------------------------------------------------------------


def read_squad(path: str) -> list[dict]:
    doc = read_json(path)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: not a SQuAD file (expected {{'data': [article, ...]}})")
    for i, art in enumerate(data):
        try:
            for para in art["paragraphs"]:
                assert isinstance(para["context"], str)
                for qa in para["qas"]:
                    assert isinstance(qa["id"], str) and isinstance(qa["question"], str)
                    for ans in qa.get("answers", []):
                        assert isinstance(ans["text"], str) and isinstance(ans["answer_start"], int)
        except (KeyError, TypeError, AssertionError):
            raise InputError(
                f"{path}: article {i} ({art.get('title', '?') if isinstance(art, dict) else '?'}) "
                "is not SQuAD-shaped (paragraphs[].context, qas[].id/question/answers)"
            ) from None
    return data


def splits(squad_dir: str, train_articles: int, holdout_articles: int, seed: int) -> dict[str, list[dict]]:
    """{"train", "holdout", "eval"}: lists of articles."""
    dev = os.path.join(squad_dir, "dev-v2.0.json")
    train_file = os.path.join(squad_dir, "train-v2.0.json")
    if not os.path.isfile(dev):
        raise InputError(f"{squad_dir}: no dev-v2.0.json (a folder with the SQuAD 2.0 JSON files)")
    if os.path.isfile(train_file):
        train, scored = read_squad(train_file), read_squad(dev)
    else:
        arts = read_squad(dev)
        if not 0 < train_articles < len(arts):
            raise InputError(
                f"--train-articles {train_articles}: {dev} has {len(arts)} articles; expected 1..{len(arts) - 1}"
            )
        train, scored = arts[:train_articles], arts[train_articles:]
    if not 0 <= holdout_articles < len(train):
        raise InputError(f"--holdout-articles {holdout_articles}: expected 0..{len(train) - 1}")
    held = set(random.Random(seed).sample(range(len(train)), holdout_articles))
    return {
        "train": [a for i, a in enumerate(train) if i not in held],
        "holdout": [a for i, a in enumerate(train) if i in held],
        "eval": scored,
    }


def sample_questions(articles: list[dict], n: int, seed: int) -> list[dict]:
    """The articles restricted to a seeded random ``n`` questions, stratified by answerable / not (smoke runs)."""
    qs = questions(articles)
    if not n or n >= len(qs):
        return articles
    rng = random.Random(seed)
    has = [q["id"] for q in qs if q.get("answers")]
    no = [q["id"] for q in qs if not q.get("answers")]
    k_has = round(n * len(has) / len(qs))
    keep = set(rng.sample(has, min(k_has, len(has)))) | set(rng.sample(no, min(n - k_has, len(no))))
    out = []
    for art in articles:
        paras = [{**p, "qas": [q for q in p["qas"] if q["id"] in keep]} for p in art["paragraphs"]]
        paras = [p for p in paras if p["qas"]]
        if paras:
            out.append({**art, "paragraphs": paras})
    return out


@dataclass
class Window:
    qid: str
    input_ids: list[int]
    token_type_ids: list[int] | None
    ctx_start: int  # index in input_ids of the window's first context token
    offsets: list[tuple[int, int]]  # character span of each context token of the window
    context: str
    start: int = 0  # training targets (token indices; 0 = [CLS] = no answer here)
    end: int = 0


def answer_chars(qa: dict, context: str) -> tuple[int, int] | None:
    if not qa.get("answers"):
        return None
    a = qa["answers"][0]
    s = a["answer_start"]
    if context[s : s + len(a["text"])] != a["text"]:  # a stale offset: fall back to the text's first occurrence
        s = context.find(a["text"])
        if s < 0:
            return None
    return s, s + len(a["text"])


def make_windows(tok, articles: list[dict], max_len: int, max_query_len: int, doc_stride: int) -> list[Window]:
    """Every question's windows over its context (see the module doc)."""
    out = []
    for art in articles:
        for para in art["paragraphs"]:
            ctx = para["context"]
            ctx_ids, ctx_offs = tok.offsets([ctx])[0]
            q_ids_all = tok.offsets([qa["question"] for qa in para["qas"]])
            for qa, (q_ids, _) in zip(para["qas"], q_ids_all):
                q_ids = q_ids[:max_query_len]
                room = max_len - len(q_ids) - 3
                if room < 1:
                    raise InputError(
                        f"--max-len {max_len}: no room for context after a {len(q_ids)}-token question "
                        f"(raise --max-len or lower --max-query-len)"
                    )
                span = answer_chars(qa, ctx)
                pos = 0
                while True:
                    ids = ctx_ids[pos : pos + room]
                    offs = ctx_offs[pos : pos + room]
                    head = [tok.cls, *q_ids, tok.sep]
                    w = Window(
                        qa["id"],
                        [*head, *ids, tok.sep],
                        [0] * len(head) + [1] * (len(ids) + 1) if tok.token_types else None,
                        len(head),
                        offs,
                        ctx,
                    )
                    if span is not None:
                        inside = [i for i, (a, b) in enumerate(offs) if b > span[0] and a < span[1] and b > a]
                        if inside and offs[0][0] <= span[0] and offs[-1][1] >= span[1]:
                            w.start, w.end = len(head) + inside[0], len(head) + inside[-1]
                    out.append(w)
                    if pos + room >= len(ctx_ids):
                        break
                    pos += min(doc_stride, room)
    return out


# ---- models ------------------------------------------------------------------------------------------


class SpanHead(nn.Module):
    """Start and end logits per token: one linear layer d → 2 (BERT's ``qa_outputs``)."""

    def __init__(self, hidden: int, std: float = 0.02) -> None:
        super().__init__()
        self.qa_outputs = nn.Linear(hidden, 2)
        nn.init.normal_(self.qa_outputs.weight, std=std)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.qa_outputs(h)


class NativeQA(nn.Module):
    def __init__(self, encoder: nn.Module, hidden: int) -> None:
        super().__init__()
        self.model, self.head = encoder, SpanHead(hidden)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        h_TD, _ = self.model(batch["input_ids"], batch["cu_seqlens"], batch["max_seqlen"])
        se_T2 = self.head(h_TD)
        B, S = len(batch["lengths"]), batch["max_seqlen"]
        # back to a padded [B, S] grid (padding stays NEG) for the span search and the loss
        out_BS2 = se_T2.new_full((B, S, 2), NEG)
        out_BS2[batch["row_T"], batch["col_T"]] = se_T2
        return out_BS2[..., 0], out_BS2[..., 1]


class HFEncoderQA(nn.Module):
    """AutoModel + SpanHead, for a model type transformers has no QA class for (our custom-code export)."""

    def __init__(self, encoder: nn.Module, hidden: int) -> None:
        super().__init__()
        self.model, self.head = encoder, SpanHead(hidden)

    def forward(self, **batch):
        se = self.head(self.model(**batch).last_hidden_state)
        return argparse.Namespace(start_logits=se[..., 0], end_logits=se[..., 1])


class QABackend:
    """Tokenisation with character offsets and a fresh span model, for one MODEL directory."""

    def __init__(self, path: str) -> None:
        from evaluation.backends import HFBackend, NativeBackend, model_kind

        self.path = path
        self.kind, doc = model_kind(path)
        if self.kind == "native":
            self.native = NativeBackend(path)
            self.tok, self.cfg = self.native.tok, self.native.cfg
            sid = self.tok.special_ids
            self.cls, self.sep, self.token_types = sid.cls, sid.sep, False
            self.family = "native"
        else:
            self.hf = HFBackend(path, doc)
            t = self.hf.tok
            self.cls, self.sep = t.cls_token_id, t.sep_token_id
            if self.cls is None or self.sep is None:
                raise InputError(f"{path}: its tokenizer has no [CLS]/[SEP] tokens")
            self.token_types = "token_type_ids" in t.model_input_names
            self.family = self.hf.family

    def offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        if self.kind == "native":
            return self.tok.encode_offsets(texts)
        enc = self.hf.tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(ids, [tuple(o) for o in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.kind == "native":
            from model.modernalbert import ModernAlbertModel

            enc = ModernAlbertModel(self.cfg)
            enc.load_state_dict(
                {k[len("model.") :]: v for k, v in self.native.mlm_state.items() if k.startswith("model.")}
            )
            return NativeQA(enc, self.cfg.hidden_size)
        from transformers import AutoModel, AutoModelForQuestionAnswering
        from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

        cfg = self.hf.config
        if cfg.model_type in MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES:
            return AutoModelForQuestionAnswering.from_pretrained(self.path)
        enc = AutoModel.from_pretrained(self.path, trust_remote_code=self.hf.remote)
        return HFEncoderQA(enc, cfg.hidden_size)

    def collate(self, wins: list[Window]) -> dict:
        """The GLUE runner's batches (unpadded native, padded HF), plus for native the [B, S] grid position of
        every token (``NativeQA`` puts its logits back there)."""
        rows = [
            {"input_ids": w.input_ids, **({"token_type_ids": w.token_type_ids} if self.token_types else {})}
            for w in wins
        ]
        if self.kind != "native":
            return self.hf.collate(rows)
        lens = [len(w.input_ids) for w in wins]
        return {
            **self.native.collate(rows),
            "lengths": lens,
            "row_T": torch.repeat_interleave(torch.arange(len(wins)), torch.tensor(lens)),
            "col_T": torch.cat([torch.arange(n) for n in lens]),
        }

    def logits(self, module: nn.Module, wins: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) logits [B, S]; padding positions NEG."""
        batch = self.collate(wins)
        if self.kind == "native":
            return module(batch)
        out = module(**batch)
        pad_BS = batch["attention_mask"] == 0
        return out.start_logits.masked_fill(pad_BS, NEG), out.end_logits.masked_fill(pad_BS, NEG)


# ---- training and prediction -------------------------------------------------------------------------


def span_loss(start_BS: torch.Tensor, end_BS: torch.Tensor, wins: list[Window]) -> torch.Tensor:
    s = torch.tensor([w.start for w in wins])
    e = torch.tensor([w.end for w in wins])
    return (F.cross_entropy(start_BS.float(), s) + F.cross_entropy(end_BS.float(), e)) / 2


@torch.no_grad()
def predict(
    backend: QABackend, module: nn.Module, wins: list[Window], eval_batch_size: int, max_answer_len: int
) -> tuple[dict[str, str], dict[str, float]]:
    """(best non-null answer text per question, null score − best span score per question); spans of at most
    ``max_answer_len`` tokens, ``eval_batch_size`` windows per forward."""
    module.eval()
    best: dict[str, tuple[float, str]] = {}
    null: dict[str, float] = {}
    order = sorted(range(len(wins)), key=lambda i: len(wins[i].input_ids))
    for s in range(0, len(order), eval_batch_size):
        chunk = [wins[i] for i in order[s : s + eval_batch_size]]
        start_BS, end_BS = backend.logits(module, chunk)
        start_BS, end_BS = start_BS.float(), end_BS.float()
        for b, w in enumerate(chunk):
            n_ctx = len(w.offsets)
            st = start_BS[b, w.ctx_start : w.ctx_start + n_ctx]
            en = end_BS[b, w.ctx_start : w.ctx_start + n_ctx]
            null[w.qid] = min(null.get(w.qid, math.inf), float(start_BS[b, 0] + end_BS[b, 0]))
            if n_ctx == 0:  # an empty context: only the null answer
                best.setdefault(w.qid, (-math.inf, ""))
                continue
            # all (start, end) pairs with start ≤ end < start + max_answer_len, best first
            pair_SS = st[:, None] + en[None, :]
            i = torch.arange(n_ctx)
            ok = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_answer_len)
            pair_SS = pair_SS.masked_fill(~ok, -math.inf)
            flat = int(torch.argmax(pair_SS))
            si, ei = divmod(flat, n_ctx)
            sc = float(pair_SS[si, ei])
            if sc > best.get(w.qid, (-math.inf, ""))[0]:
                text = w.context[w.offsets[si][0] : w.offsets[ei][1]].strip()
                best[w.qid] = (sc, text)
    module.train()
    return {q: t for q, (_, t) in best.items()}, {q: null[q] - best[q][0] for q in best}


def answers(spans: dict[str, str], margin: dict[str, float], threshold: float) -> dict[str, str]:
    return {q: ("" if margin[q] > threshold else t) for q, t in spans.items()}


def grouped_batches(lengths: list[int], batch_size: int, seed: int, group: int = 50) -> list[list[int]]:
    """Random batches of similar lengths: shuffle, sort each run of ``group`` batches' worth of windows by
    length, cut, shuffle the batches. Padding costs what it costs in a random batch only at the group's edges."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = group * batch_size
    batches = []
    for s in range(0, len(order), span):
        part = sorted(order[s : s + span], key=lambda i: lengths[i])
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def finetune_one(
    backend: QABackend, wins: dict[str, list[Window]], arts: dict[str, list[dict]], a: SquadRun, seed: int, log
):
    module = backend.build(seed)
    params = [p for p in module.parameters() if p.requires_grad]
    train = wins["train"]
    lengths = [len(w.input_ids) for w in train]
    history: list[dict] = []
    epoch_start = 0.0

    def epoch_batches(e: int) -> list[list[int]]:
        nonlocal epoch_start
        epoch_start = time.time()
        return grouped_batches(lengths, a.batch_size, seed * 1000 + e + 1)

    def step_loss(idx: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chunk = [train[i] for i in idx]
        loss = span_loss(*backend.logits(module, chunk), chunk)
        return loss, {"loss": loss}

    def after_epoch(e: int, m: dict[str, float]) -> None:
        epoch = e + 1
        rec = {"epoch": epoch, "train_loss": m["loss"], "seconds": round(time.time() - epoch_start, 1)}
        if wins["holdout"]:
            spans, margin = predict(backend, module, wins["holdout"], a.eval_batch_size, a.max_answer_len)
            thr, _ = best_null_threshold(arts["holdout"], spans, margin)
            rec.update(
                {
                    "threshold": thr,
                    **{f"holdout_{k}": v for k, v in score(arts["holdout"], answers(spans, margin, thr)).items()},
                }
            )
            # the span head alone: F1 on the answerable questions when every question is answered
            rec["holdout_span_f1"] = score(arts["holdout"], spans).get("HasAns_f1", 0.0)
        history.append(rec)
        log(
            f"    seed {seed} epoch {epoch}/{a.epochs}: loss {rec['train_loss']:.4f}"
            + (
                f", held-out EM {rec['holdout_exact']:.1f} F1 {rec['holdout_f1']:.1f} HasAns F1 "
                f"{rec.get('holdout_HasAns_f1', 0):.1f} (null threshold {rec['threshold']:.2f}; always answering: "
                f"HasAns F1 {rec['holdout_span_f1']:.1f})"
                if "threshold" in rec
                else ""
            )
            + f" [{rec['seconds']:.0f} s]"
        )

    # grouping keeps every full group a whole number of batches: ceil(n / batch) per epoch, as unsorted
    fit(
        module,
        params,
        FitConfig(a.lr, a.epochs, steps_per_epoch(len(train), a.batch_size)),
        epoch_batches,
        step_loss,
        after_epoch,
        progress=f"    seed {seed}",
    )
    threshold = history[-1].get("threshold", 0.0)
    spans, margin = predict(backend, module, wins["eval"], a.eval_batch_size, a.max_answer_len)
    return answers(spans, margin, threshold), history, threshold


def safe_name(path: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(os.path.normpath(path))) or "model"


def run_model(path: str, arts: dict[str, list[dict]], a: SquadRun, log) -> dict:
    backend = QABackend(path)
    t0 = time.time()
    wins = {k: make_windows(backend, v, a.max_len, a.max_query_len, a.doc_stride) for k, v in arts.items()}
    log(f"== {path} ({backend.kind}/{backend.family}): windows " + ", ".join(f"{k} {len(v)}" for k, v in wins.items()))
    seeds, rows = [], {}
    for seed in a.seeds:
        preds, history, thr = finetune_one(backend, wins, arts, a, seed, log)
        rows[seed] = per_question(arts["eval"], preds)
        res = aggregate(rows[seed])
        seeds.append({"seed": seed, "threshold": thr, "history": history, "eval": res, "predictions": preds})
        log(
            f"  seed {seed}: EM {res['exact']:.2f} F1 {res['f1']:.2f} HasAns F1 {res.get('HasAns_f1', 0):.2f} "
            f"NoAns F1 {res.get('NoAns_f1', 0):.2f}"
        )
    keys = [k for k in seeds[0]["eval"] if not k.endswith("total")]
    qids = list(rows[a.seeds[0]])
    ci = {
        m: [100 * x for x in bootstrap_ci([float(np.mean([rows[s][q][j] for s in a.seeds])) for q in qids], seed=0)]
        for m, j in (("exact", 0), ("f1", 1))
    }
    return {
        "model": path,
        "backend": f"{backend.kind}/{backend.family}",
        "per_seed": seeds,
        "summary": {k: summarize([s["eval"][k] for s in seeds]) for k in keys},
        "ci95_seed_mean": ci,
        "windows": {k: len(v) for k, v in wins.items()},
        "seconds": round(time.time() - t0, 1),
    }


def markdown(doc: dict) -> str:
    a = doc["args"]
    lines = [
        f"SQuAD 2.0 on {doc['questions']['eval']} eval questions ({doc['data']}); trained on "
        f"{doc['questions']['train']} questions, null threshold and choices on {doc['questions']['holdout']} "
        f"held-out training questions. {a['epochs']} epochs, lr {a['lr']:g}, batch {a['batch_size']}, "
        f"max_len {a['max_len']}, stride {a['doc_stride']}, seeds {a['seeds']}. Median over seeds "
        "(min – max); interval: 95 % bootstrap over questions of the seed-averaged score.",
        "",
        "| model | EM | F1 | F1 95 % CI | HasAns F1 | NoAns F1 | seeds (F1 min – max) |",
        "|---|---|---|---|---|---|---|",
    ]
    b = doc["baseline"]
    lines.append(
        f'| baseline: always "" | {b["exact"]:.2f} | {b["f1"]:.2f} | | {b.get("HasAns_f1", 0):.2f} | '
        f"{b.get('NoAns_f1', 0):.2f} | |"
    )
    for r in doc["models"]:
        s = r["summary"]
        lo, hi = r["ci95_seed_mean"]["f1"]
        lines.append(
            f"| {r['model']} | {s['exact']['median']:.2f} | **{s['f1']['median']:.2f}** | {lo:.1f} – {hi:.1f} | "
            f"{s.get('HasAns_f1', {}).get('median', 0):.2f} | {s.get('NoAns_f1', {}).get('median', 0):.2f} | "
            f"{s['f1']['min']:.2f} – {s['f1']['max']:.2f} ({s['f1']['n']}) |"
        )
    return "\n".join(lines) + "\n"


def run(a: SquadRun, log) -> dict:
    arts = splits(a.squad_dir, a.train_articles, a.holdout_articles, a.split_seed)
    arts["train"] = sample_questions(arts["train"], a.max_train, a.split_seed)
    arts["holdout"] = sample_questions(arts["holdout"], a.max_holdout, a.split_seed)
    arts["eval"] = [] if a.holdout_only else sample_questions(arts["eval"], a.max_eval, a.split_seed)
    n_q = {k: len(questions(v)) for k, v in arts.items()}
    doc = {
        "args": dataclasses.asdict(a),
        "questions": n_q,
        "data": "train-v2.0.json → dev-v2.0.json"
        if os.path.isfile(os.path.join(a.squad_dir, "train-v2.0.json"))
        else f"dev-v2.0.json split by article at {a.train_articles}",
        "baseline": score(arts["eval"], {q["id"]: "" for q in questions(arts["eval"])}),
        "models": [],
    }
    for m in a.models:
        doc["models"].append(run_model(m, arts, a, log))
    with OutputDir(a.out, overwrite=True) as tmp:
        for r in doc["models"]:
            for s in r["per_seed"]:
                with open(
                    os.path.join(tmp, f"predictions_{safe_name(r['model'])}_seed{s['seed']}.json"),
                    "w",
                    encoding="utf-8",
                ) as f:
                    json.dump(s.pop("predictions"), f, indent=0)
        with open(os.path.join(tmp, "results.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        with open(os.path.join(tmp, "results.md"), "w", encoding="utf-8") as f:
            f.write(markdown(doc))
    return doc


def parser() -> argparse.ArgumentParser:
    D = SquadRun  # the defaults live on the typed run
    p = argparse.ArgumentParser(
        prog="python -m evaluation.squad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="+", help="native or HuggingFace model directories")
    p.add_argument("--squad-dir", required=True, help="folder with dev-v2.0.json (and train-v2.0.json if you have it)")
    p.add_argument("--out", required=True, help="results directory (results.json, results.md, predictions)")
    p.add_argument(
        "--train-articles", type=int, default=D.train_articles, help="dev-only folder: the first N articles train"
    )
    p.add_argument(
        "--holdout-articles", type=int, default=D.holdout_articles, help="training articles held out for choices"
    )
    p.add_argument("--split-seed", type=int, default=D.split_seed, help="which articles are held out; question subsets")
    p.add_argument("--max-train", type=int, default=D.max_train, help="seeded random training questions (0: all)")
    p.add_argument("--max-holdout", type=int, default=D.max_holdout, help="seeded random held-out questions (0: all)")
    p.add_argument("--max-eval", type=int, default=D.max_eval, help="seeded random eval questions (0: all; smoke runs)")
    p.add_argument(
        "--holdout-only",
        action="store_true",
        help="choosing hyper-parameters: train and score the held-out articles only, never read the eval split",
    )
    p.add_argument("--seeds", default=",".join(map(str, D.seeds)), help="comma-separated fine-tuning seeds")
    p.add_argument("--epochs", type=int, default=D.epochs)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--eval-batch-size", type=int, default=D.eval_batch_size)
    p.add_argument("--max-len", type=int, default=D.max_len, help="tokens per window")
    p.add_argument("--max-query-len", type=int, default=D.max_query_len)
    p.add_argument("--doc-stride", type=int, default=D.doc_stride, help="tokens between consecutive windows' starts")
    p.add_argument("--max-answer-len", type=int, default=D.max_answer_len, help="tokens")
    p.add_argument("--threads", type=int, default=D.threads, help="torch threads (0: torch's default)")
    return p


def score_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.squad score",
        description="The official SQuAD 2.0 scoring of a predictions file (see python -m evaluation.squad --help).",
    )
    p.add_argument("data", help="SQuAD 2.0 JSON (e.g. dev-v2.0.json)")
    p.add_argument("preds", help='JSON object: question id → answer text ("" for no answer)')
    a = p.parse_args(argv)
    try:
        data = read_squad(a.data)
        preds = read_json(a.preds)
        if not isinstance(preds, dict) or not all(isinstance(v, str) for v in preds.values()):
            raise InputError(f"{a.preds}: expected a JSON object of question id → answer text")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    known = {qa["id"] for qa in questions(data)}
    missing = len(known - set(preds))
    if missing:
        print(f"note: {missing} questions have no prediction and are left out of the totals", file=sys.stderr)
    print(json.dumps(score(data, preds)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:
        return score_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds {args.seeds!r}: comma-separated integers", file=sys.stderr)
        return 2
    try:
        a = SquadRun.from_args(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        doc = run(a, log)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(doc))
    print(f"-> {a.out}/results.json, results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
