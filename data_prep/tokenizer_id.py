"""One tokenizer identity, checked wherever a model meets shards or text of a tokenizer.

A shard build records its tokenizer in ``index.json`` (file, kind, sha256, vocab_size); a native model
directory ships the tokenizer file its data was built with and records its sha256 in ``config.json``
(``model/native_format.py``). A model trained on one tokenizer reads the ids of another as other tokens
(unigram vs BPE at the same vocabulary size trains and evaluates without a sound, on nonsense), and an id
at or above the model's vocabulary can never reach an embedding (an ``IndexError`` deep in the forward).
``check_same_tokenizer`` is the one comparison every tool makes before the first batch:

* the same sha256: the same tokenizer;
* two sha256s: different files may still hold the same vocabulary (a BERT ``vocab.txt`` travels with the
  shards as the equivalent ``tokenizer.json``, byte-different from the teacher's own): the two files are
  loaded and their tokens compared id by id, with the special ids; anything else is a mismatch, one line
  naming both tokenizers;
* a side without a recorded identity (an older directory): a one-line warning, no failure;
* then the ids the data can hold (its vocabulary) against the model's embedding rows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from data_prep.errors import DataPrepError
from data_prep.tokenizer import Tokenizer, tokenizer_kind
from fileio import sha256_file


@dataclass(frozen=True)
class TokenizerId:
    """A tokenizer as a model directory, a shard build or an export records it.

    ``owner`` says whose it is in a message (``init_from=runs/x``, ``--val runs/shards``); ``where`` names
    the file (a path or a URL); ``locate`` gives a local path of the file when the vocabularies must be
    compared (a URL build's tokenizer is fetched only then).
    """

    owner: str
    where: str
    sha256: str | None = None  # None: not recorded (an older directory)
    kind: str | None = None  # "sentencepiece" or "hf"
    vocab_size: int | None = None
    locate: Callable[[], str] | None = None

    def describe(self) -> str:
        facts = [
            self.kind,
            f"{self.vocab_size} tokens" if self.vocab_size else "",
            self.sha256 and f"sha256 {self.sha256[:12]}",
        ]
        return f"{self.where} ({', '.join(f for f in facts if f)})" if any(facts) else self.where


def file_tokenizer(owner: str, path: str | None, sha256: str | None = None) -> TokenizerId:
    """The tokenizer a directory ships as a file (``path``; None: it ships none), with the sha256 it recorded
    (None: the file's own, computed here)."""
    if path is None or not os.path.isfile(path):
        return TokenizerId(owner, path or f"{owner} (no tokenizer file)", sha256)
    return TokenizerId(owner, path, sha256 or sha256_file(path), tokenizer_kind(path), None, lambda: path)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _vocabulary(tok: TokenizerId) -> tuple[list[str], dict[str, int]] | None:
    """The tokens id by id and the special ids of the tokenizer file, or None when it cannot be read."""
    if tok.locate is None:
        return None
    try:
        t = Tokenizer(tok.locate())
    except (DataPrepError, OSError):
        return None
    return t.vocabulary(), t.special_ids.as_dict()


def _same_vocabulary(a: TokenizerId, b: TokenizerId) -> bool:
    if a.vocab_size and b.vocab_size and a.vocab_size != b.vocab_size:
        return False
    va = _vocabulary(a)
    return va is not None and va == _vocabulary(b)


def check_same_tokenizer(
    model: TokenizerId,
    data: TokenizerId,
    embeddings: int,
    error: type[Exception],
    note: Callable[[str], None] | None = warn,
    hint: str = "",
) -> None:
    """Raise ``error`` (one line) when ``data``'s token ids do not mean ``model``'s tokens, or can reach past
    its ``embeddings`` rows. ``note`` gets the one-line warning or note (None: say nothing); ``hint`` ends the
    mismatch line (default: build the shards with the model's tokenizer)."""
    say = note or (lambda _: None)
    hint = hint or f"use shards built with the model's tokenizer (data_prep/build_shards.py --tokenizer {model.where})"
    if model.sha256 is None or data.sha256 is None:
        blind = model if model.sha256 is None else data
        say(
            f"warning: {blind.owner}: no tokenizer identity (no sha256 recorded, no tokenizer file: an older "
            f"directory?); not checked that {model.owner} and {data.owner} share a tokenizer"
        )
    elif model.sha256 != data.sha256:
        if not _same_vocabulary(model, data):
            raise error(
                f"tokenizer mismatch: {model.owner} has {model.describe()}, {data.owner} has "
                f"{data.describe()}: the same ids mean other tokens; {hint}"
            )
        say(
            f"note: the tokenizers of {model.owner} ({model.where}) and {data.owner} ({data.where}) are different "
            "files with the same tokens and special ids: taken as the same tokenizer"
        )
    check_ids_fit(data, model.owner, embeddings, error)


def check_ids_fit(data: TokenizerId, model: str, embeddings: int, error: type[Exception]) -> None:
    """``data``'s ids (below its vocabulary size) reach an embedding of ``model``'s ``embeddings`` rows: checked
    once at start-up from the recorded vocabulary, not per batch on the device."""
    if data.vocab_size is not None and data.vocab_size > embeddings:
        raise error(
            f"{data.owner}: its tokenizer {data.describe()} gives ids up to {data.vocab_size - 1}, but {model} "
            f"embeds only {embeddings} tokens: ids at or above {embeddings} can never reach an embedding"
        )


def shipped_tokenizer(
    model_dir: str, path: str, recorded: str | None, embeddings: int, error: type[Exception]
) -> Tokenizer:
    """The tokenizer a native model directory ships at ``path``, once it is checked to be the one its config.json
    records (``recorded`` sha256; None in older directories: nothing to compare, no note) and its ids fit the
    model's ``embeddings`` rows. Every reader of a native directory's text side goes through here: the
    exports, the evaluation backends, the embedder and fine-tuning."""
    import dataclasses

    try:
        tok = Tokenizer(path)
    except DataPrepError as e:
        raise error(f"{model_dir}: its tokenizer: {e}") from None
    check_same_tokenizer(
        TokenizerId(f"the model {model_dir}", "the tokenizer its config.json records", recorded),
        dataclasses.replace(file_tokenizer("its directory", path), vocab_size=tok.vocab_size),
        embeddings,
        error,
        note=warn if recorded else None,
        hint="the file was replaced after the model was saved; put back the one it was trained with",
    )
    return tok
