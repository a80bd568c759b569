"""The fast shard writer against the reference (tarfile + np.save), and the reader."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from data_prep.shards import ShardReader, ShardWriter, _npy_header
from fileio import sha256_file


def _reference_tar(samples) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for n, (ids, lens, docs) in enumerate(samples):
            seg = np.stack([lens.astype(np.int64), docs.astype(np.int64)], axis=1)
            for field, arr in (("input_ids", ids), ("segments", seg)):
                data = io.BytesIO()
                np.save(data, arr, allow_pickle=False)
                info = tarfile.TarInfo(f"{n:09d}.{field}.npy")
                info.size, info.mode, info.mtime = len(data.getvalue()), 0o444, 0
                tar.addfile(info, io.BytesIO(data.getvalue()))
    return buf.getvalue()


def _samples(dtype, count=60, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lens = rng.integers(3, 40, size=int(rng.integers(1, 6)))
        out.append(
            (
                rng.integers(0, 60000, size=int(lens.sum())).astype(dtype),
                lens.astype(np.int32),
                rng.integers(0, 10**12, size=len(lens)),
            )
        )
    return out


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_fast_writer_is_byte_equal_to_tarfile_and_np_save(tmp_path, dtype):
    samples = _samples(dtype)
    w = ShardWriter(str(tmp_path / "s.tar"))
    for s in samples:
        w.add(*s)
    sha = w.close()
    data = (tmp_path / "s.tar").read_bytes()
    assert data == _reference_tar(samples)
    assert sha == sha256_file(str(tmp_path / "s.tar"))
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("shape", [(0,), (7,), (10**6,), (10**17,), (3, 2), (123456, 2)])
def test_npy_header_matches_numpy(shape):
    arr = np.lib.stride_tricks.as_strided(np.zeros(1, np.int64), shape=shape, strides=(0,) * len(shape))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    assert _npy_header(arr) == buf.getvalue()


def test_reader_round_trip_and_checks(tmp_path):
    samples = _samples(np.uint16, count=9)
    w = ShardWriter(str(tmp_path / "s.tar"))
    for s in samples:
        w.add(*s)
    sha = w.close()
    r = ShardReader(str(tmp_path / "s.tar"), sha, 9)
    for i, (ids, lens, docs) in enumerate(samples):
        got = r.sample(i)
        assert np.array_equal(got[0], ids) and got[0].dtype == np.uint16
        assert np.array_equal(got[1], lens) and np.array_equal(got[2], docs)
    with pytest.raises(Exception, match="s.tar: holds 9 samples, index.json says 10"):
        ShardReader(str(tmp_path / "s.tar"), sha, 10)
    with pytest.raises(Exception, match="s.tar: corrupt"):
        ShardReader(str(tmp_path / "s.tar"), "0" * 64)
    with pytest.raises(Exception, match="gone.tar: missing"):
        ShardReader(str(tmp_path / "gone.tar"))


def test_abandoned_writer_leaves_no_shard(tmp_path):
    w = ShardWriter(str(tmp_path / "s.tar"))
    w.add(*_samples(np.uint16, count=1)[0])
    w.abort()
    assert list(tmp_path.iterdir()) == []
