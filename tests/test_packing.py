import numpy as np
import pytest

from data_prep.packing import pack_documents

CLS, SEP = 2, 3


def _pack(docs, seq_len):
    lens = np.array([len(d) for d in docs])
    flat = np.array([t for d in docs for t in d], dtype=np.uint16)
    return pack_documents(flat, lens, np.arange(100, 100 + len(docs)), seq_len, CLS, SEP)


def test_greedy_packing_wraps_every_document_and_keeps_order():
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33], [40]]
    block = _pack(docs, seq_len=10)
    samples = list(block.samples())
    # [CLS]10 11 12[SEP] [CLS]20 21[SEP] = 9 tokens; the next (6 tokens) does not fit in 10
    assert [s[0].tolist() for s in samples] == [
        [CLS, 10, 11, 12, SEP, CLS, 20, 21, SEP],
        [CLS, 30, 31, 32, 33, SEP, CLS, 40, SEP],
    ]
    assert [s[1].tolist() for s in samples] == [[5, 4], [6, 3]]
    assert [s[2].tolist() for s in samples] == [[100, 101], [102, 103]]
    assert block.split_documents == 0 and block.empty_documents == 0


def test_long_documents_are_cut_into_full_pieces_and_empty_ones_dropped():
    long_doc = list(range(10, 30))  # 20 tokens, room per piece = 8 - 2 = 6
    block = _pack([[], long_doc, [50]], seq_len=8)
    samples = list(block.samples())
    assert all(len(s[0]) <= 8 for s in samples)
    recovered = [t for s in samples for t in s[0].tolist() if t not in (CLS, SEP)]
    assert recovered == long_doc + [50]
    lens = [n for s in samples for n in s[1].tolist()]
    assert lens == [8, 8, 8, 4, 3]  # 6+6+6+2 content tokens, then the short document
    assert [d for s in samples for d in s[2].tolist()] == [101, 101, 101, 101, 102]
    assert block.split_documents == 1 and block.empty_documents == 1


def test_seq_len_too_small_is_rejected():
    with pytest.raises(ValueError, match="seq_len"):
        _pack([[1]], seq_len=2)
