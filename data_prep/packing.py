"""Packing tokenized documents into samples of at most ``seq_len`` tokens.

Every document becomes ``[CLS] tokens [SEP]``; a document longer than ``seq_len - 2`` tokens is cut
into pieces of ``seq_len - 2`` tokens, each wrapped the same way, so every segment the model sees is a
well-formed sequence. Pieces are packed greedily, in order: a piece that does not fit the current
sample starts the next one. Samples are not padded (the model runs unpadded); each records its
segment lengths and the corpus-wide document id of every segment, so attention can stay inside a
document and documents can be recovered from the shards.

Shapes: P pieces, N samples, T tokens in the block (specials included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class PackedBlock:
    tokens_T: np.ndarray  # all samples' tokens, back to back
    seg_lens_P: np.ndarray  # int32, tokens per segment (specials included)
    seg_doc_ids_P: np.ndarray  # int64, corpus-wide id of each segment's document
    sample_seg_bounds: np.ndarray  # int64 [N+1]: sample n holds segments [b[n], b[n+1])
    split_documents: int  # documents longer than seq_len - 2, cut into pieces
    empty_documents: int  # documents with no tokens at all, dropped

    @property
    def num_samples(self) -> int:
        return len(self.sample_seg_bounds) - 1

    def samples(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (input_ids, doc_lens, doc_ids) per sample."""
        tok_bounds = np.concatenate([[0], np.cumsum(self.seg_lens_P, dtype=np.int64)])
        for n in range(self.num_samples):
            s0, s1 = self.sample_seg_bounds[n], self.sample_seg_bounds[n + 1]
            yield (self.tokens_T[tok_bounds[s0] : tok_bounds[s1]], self.seg_lens_P[s0:s1], self.seg_doc_ids_P[s0:s1])


def pack_documents(
    tokens: np.ndarray, doc_lens: np.ndarray, doc_ids: np.ndarray, seq_len: int, cls_id: int, sep_id: int
) -> PackedBlock:
    """Pack one block's documents (in order) into samples; see the module docstring.

    ``tokens`` holds the documents' ids back to back (no specials), ``doc_lens``/``doc_ids`` one entry
    per document. The output tokens have ``tokens.dtype``.
    """
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3 to hold [CLS] x [SEP], got {seq_len}")
    room = seq_len - 2
    doc_lens_D = np.asarray(doc_lens, dtype=np.int64)
    kept = doc_lens_D > 0
    doc_lens_D, doc_ids_D = doc_lens_D[kept], np.asarray(doc_ids, dtype=np.int64)[kept]

    # Pieces: document d is cut into ceil(len / room) pieces, all full except the last.
    pieces_D = -(-doc_lens_D // room)
    piece_doc_P = np.repeat(np.arange(len(doc_lens_D)), pieces_D)
    first_piece_D = np.concatenate([[0], np.cumsum(pieces_D)[:-1]]).astype(np.int64)
    piece_rank_P = np.arange(len(piece_doc_P)) - first_piece_D[piece_doc_P]
    piece_content_P = np.minimum(room, doc_lens_D[piece_doc_P] - piece_rank_P * room)
    seg_lens_P = (piece_content_P + 2).astype(np.int32)

    # Token stream: content placed after its [CLS], with a [SEP] after each piece.
    seg_start_P = np.concatenate([[0], np.cumsum(seg_lens_P, dtype=np.int64)[:-1]]).astype(np.int64)
    tokens_T = np.empty(int(seg_lens_P.sum()), dtype=tokens.dtype)
    tokens_T[seg_start_P] = cls_id
    tokens_T[seg_start_P + seg_lens_P - 1] = sep_id
    piece_of_token = np.repeat(np.arange(len(seg_lens_P)), piece_content_P)
    tokens_T[np.arange(len(tokens)) + 2 * piece_of_token + 1] = tokens

    # Greedy packing in order: a piece that does not fit starts a new sample.
    bounds = [0]
    fill = 0
    for p, n in enumerate(seg_lens_P.tolist()):
        if fill + n > seq_len:
            bounds.append(p)
            fill = 0
        fill += n
    if len(seg_lens_P):
        bounds.append(len(seg_lens_P))
    return PackedBlock(
        tokens_T=tokens_T,
        seg_lens_P=seg_lens_P,
        seg_doc_ids_P=doc_ids_D[piece_doc_P],
        sample_seg_bounds=np.asarray(bounds, dtype=np.int64),
        split_documents=int((pieces_D > 1).sum()),
        empty_documents=int((~kept).sum()),
    )
