"""Shards from URLs: webdataset reads our format, a loopback HTTP server stands in for object storage,
the node-local cache (verification, re-fetch, LRU, prefetch, one download per node)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch

from conftest import pretrain, run_cli
from data_prep.shards import ShardError, ShardIndex, ShardReader
from pretrain.data import LoaderConfig, PretrainLoader
from pretrain.shard_cache import ShardCache, join, load_index


class _Server:
    """A shard directory served on 127.0.0.1 (a thread), counting the GET requests per file."""

    def __init__(self, root: str) -> None:
        self.root, self.gets = root, {}
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.gets[name] = server.gets.get(name, 0) + 1
                super().do_GET()

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=root))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(shards_dir, tmp_path):
    root = tmp_path / "served"
    shutil.copytree(shards_dir, root)
    server = _Server(str(root))
    yield server
    server.close()


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k], k


def test_webdataset_reads_our_shards_as_our_reader_does(shards_dir):
    import webdataset as wds

    index = ShardIndex.load(shards_dir)
    entry = index.splits["train"][1]
    ours = ShardReader(index.shard_path(entry), entry.sha256, entry.samples)
    theirs = list(wds.WebDataset(index.shard_path(entry), shardshuffle=False, empty_check=False).decode())
    assert len(theirs) == len(ours) == entry.samples
    for i, sample in enumerate(theirs):
        ids, doc_lens, doc_ids = ours.sample(i)
        assert sample["__key__"] == f"{i:09d}"
        np.testing.assert_array_equal(sample["input_ids.npy"], ids)
        np.testing.assert_array_equal(sample["segments.npy"], np.stack([doc_lens, doc_ids], axis=1))
        assert sample["input_ids.npy"].dtype == ids.dtype


def test_loader_from_http_and_pipe_urls_equals_the_local_directory(shards_dir, served, tmp_path):
    local = _batches(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=16, num_workers=1)), 40)
    http = PretrainLoader(LoaderConfig(served.url, micro_batch_size=16, num_workers=1, cache_dir=str(tmp_path / "c1")))
    _same(_batches(http, 40), local)
    assert load_index(served.url).raw == ShardIndex.load(shards_dir).raw
    pipe = PretrainLoader(
        LoaderConfig(f"pipe:cat {shards_dir}/{{}}", micro_batch_size=16, num_workers=0, cache_dir=str(tmp_path / "c2"))
    )
    _same(_batches(pipe, 40), local)
    assert join("pipe:aws s3 cp s3://b/p/{} -", "index.json") == "pipe:aws s3 cp s3://b/p/index.json -"
    assert join("https://h/p/", "x.tar") == "https://h/p/x.tar"


def test_a_missing_or_truncated_shard_at_the_source_is_fetched_twice_then_named(served, tmp_path):
    index = ShardIndex.load(served.root)
    first, second = index.splits["train"][0], index.splits["train"][1]
    os.remove(os.path.join(served.root, first.file))
    cache = ShardCache(served.url, str(tmp_path / "c"))
    with pytest.raises(ShardError) as e:
        cache.fetch(first.file, first.sha256)
    msg = str(e.value)
    assert msg.startswith(f"shard {first.file}: download failed (") and f"fetched twice from {served.url}/" in msg
    assert "\n" not in msg and served.gets[first.file] == 2
    os.truncate(os.path.join(served.root, second.file), 4096)
    with pytest.raises(
        ShardError,
        match=rf"shard {second.file}: downloaded 4,096 bytes with sha256 .* \(truncated or "
        r"changed at the source\?\) \(fetched twice",
    ):
        cache.fetch(second.file, second.sha256)
    assert served.gets[second.file] == 2
    assert sorted(n for n in os.listdir(cache.dir) if not n.startswith(".")) == []  # no partial file kept
    # through the loader (shard order unshuffled: the missing shard comes first), the same one line
    loader = PretrainLoader(
        LoaderConfig(served.url, micro_batch_size=8, num_workers=1, shuffle=False, cache_dir=str(tmp_path / "c3"))
    )
    with pytest.raises(ShardError, match=rf"^shard {first.file}: download failed"):
        next(iter(loader))


def test_a_cached_copy_that_went_bad_is_fetched_anew(shards_dir, served, tmp_path):
    cache_dir = tmp_path / "c"
    cfg = dict(micro_batch_size=16, num_workers=0, shuffle=False, cache_dir=str(cache_dir))
    _batches(PretrainLoader(LoaderConfig(served.url, **cfg)), 2)
    first = ShardIndex.load(shards_dir).splits["train"][0].file
    raw = bytearray((cache_dir / first).read_bytes())
    raw[3000] ^= 0xFF
    (cache_dir / first).write_bytes(bytes(raw))
    again = _batches(PretrainLoader(LoaderConfig(served.url, **cfg)), 2)
    _same(
        again, _batches(PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=16, num_workers=0, shuffle=False)), 2)
    )
    assert served.gets[first] == 2


def test_cache_evicts_least_recently_used_and_prefetches(served, tmp_path):
    entries = ShardIndex.load(served.root).splits["train"]
    size = max(os.path.getsize(os.path.join(served.root, e.file)) for e in entries)
    cache = ShardCache(served.url, str(tmp_path / "c"), limit_bytes=2 * size + 1)
    for e in entries[:3]:
        cache.fetch(e.file, e.sha256)
    cached = lambda: sorted(n for n in os.listdir(cache.dir) if n.endswith(".tar"))  # noqa: E731
    assert cached() == [entries[1].file, entries[2].file]  # the oldest went first
    cache.fetch(entries[1].file, entries[1].sha256)  # a hit makes it recent
    cache.fetch(entries[3].file, entries[3].sha256)
    assert cached() == [entries[1].file, entries[3].file]
    cache.prefetch(entries[4].file, entries[4].sha256)
    assert cache.fetch(entries[4].file, entries[4].sha256) == os.path.join(cache.dir, entries[4].file)
    assert served.gets[entries[4].file] == 1 and served.gets[entries[1].file] == 1


def test_one_download_per_node_when_workers_ask_together(served, tmp_path):
    entry = ShardIndex.load(served.root).splits["train"][0]
    caches = [ShardCache(served.url, str(tmp_path / "shared")) for _ in range(4)]  # as 4 loader workers
    out = [None] * 4
    threads = [
        threading.Thread(target=lambda i=i: out.__setitem__(i, caches[i].fetch(entry.file, entry.sha256)))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 1 and served.gets[entry.file] == 1


def test_index_url_errors_are_one_line(tmp_path, capsys):
    from pretrain.train import main

    server = _Server(str(tmp_path))  # serves an empty directory: index.json 404s
    try:
        rc = main(["--config", "pretrain/configs/tiny.yaml", f"data.dir={server.url}", f"run_dir={tmp_path / 'run'}"])
    finally:
        server.close()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith(f"error: data.dir={server.url!r}: cannot fetch {server.url}/index.json (")


@pytest.mark.slow
def test_training_from_a_url_equals_local_and_resumes_exactly(shards_dir, served, tmp_path):
    common = [
        "train.steps=6",
        "train.micro_batch_size=8",
        "train.global_batch_tokens=2048",
        "data.num_workers=1",
        "schedule.warmup_steps=3",
        "train.log_every=1",
        "eval.every=0",
        "checkpoint.every=2",
    ]
    ref = pretrain(1, [f"data.dir={shards_dir}", f"run_dir={tmp_path / 'local'}", *common])
    assert ref.returncode == 0, ref.stderr[-3000:]
    url_args = [
        f"data.dir={served.url}",
        f"run_dir={tmp_path / 'url'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        *common,
    ]
    killed = pretrain(1, url_args, env={"MODERNALBERT_KILL_AFTER_STEP": "3"})
    assert killed.returncode != 0
    resumed = pretrain(1, url_args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_00000002" in resumed.stdout

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, open(tmp_path / run / "metrics.jsonl"))}

    assert losses("url") == losses("local")  # the last logging of each step; exact, as from the same bytes
    # the tools follow the run to its URL: the tokenizer and the calibration/validation shards come through the cache
    env = {**os.environ, "MODERNALBERT_CACHE": str(tmp_path / "tool-cache")}
    r = run_cli(["tools/consolidate_checkpoint.py", str(tmp_path / "url"), "--out", str(tmp_path / "native")], env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli(
        [
            "tools/merge_experts.py",
            str(tmp_path / "native"),
            "--out",
            str(tmp_path / "merged"),
            "--method",
            "routing",
            "--calib-batches",
            "2",
            "--val-batches",
            "2",
        ],
        env=env,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["calibration"]["shards"] == served.url and report["val_shards"] == served.url


def test_s3_urls_through_the_aws_cli_against_a_local_s3_server(shards_dir, tmp_path, monkeypatch):
    """s3:// through `aws s3 cp` (the AWS CLI reads AWS_ENDPOINT_URL) against moto's S3 server on 127.0.0.1."""
    pytest.importorskip("moto", reason="moto is a dev requirement (a local S3 server)")
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI (awscli, a dev requirement) is not on PATH")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="corpus")
        for name in os.listdir(shards_dir):
            s3.upload_file(os.path.join(shards_dir, name), "corpus", f"shards/{name}")
        remote = PretrainLoader(
            LoaderConfig("s3://corpus/shards", micro_batch_size=16, num_workers=0, cache_dir=str(tmp_path / "c"))
        )
        local = PretrainLoader(LoaderConfig(shards_dir, micro_batch_size=16, num_workers=0))
        _same(_batches(remote, 10), _batches(local, 10))
        with pytest.raises(ShardError, match=r"^shard nothing\.tar: download failed"):
            ShardCache("s3://corpus/shards", str(tmp_path / "c")).fetch("nothing.tar", None)
    finally:
        server.stop()
