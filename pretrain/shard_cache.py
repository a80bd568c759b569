"""Shards from a URL: webdataset's URL layer plus a node-local cache that the loader reads by mmap.

``data.dir`` is a local directory or a URL prefix whose ``index.json`` lists the shards::

    /data/shards                              read in place (no cache)
    file:///data/shards                       the same
    https://host/shards                       curl (webdataset's ``gopen``)
    s3://bucket/shards                        ``aws s3 cp URL -`` (the AWS CLI, its usual credentials)
    gs://bucket/shards                        ``gsutil cat URL`` (webdataset's ``gopen``)
    pipe:ssh host cat /data/shards/{}         any command that writes the file to stdout; ``{}`` is
                                              replaced by the file name (index.json, train-000000.tar, …)

Why a cache and not a stream: the loader's exact global order reads samples by random access inside
a shard (a seeded permutation), which a tar stream cannot give. So each shard is fetched whole, once
per node, into ``data.cache_dir`` and then read exactly as a local shard: the order, the masking and
exact resume do not depend on where the data lives.

The cache: a download goes to a temp name, its sha256 is computed while it streams and compared with
index.json, then it is renamed into place (a reader never sees a partial file). A failed or corrupt
download is fetched once more, then named in one line (``ShardError``). Processes on a node share the
cache: a lock file per shard makes one of them download while the others wait for it. Files are
evicted least recently used first once the cache exceeds ``data.cache_gb`` (a file evicted while
another process has it mapped stays readable to that process). Each loader worker fetches the next
shard in its order in a background thread while it reads the current one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlparse

from data_prep.errors import DataPrepError
from data_prep.shards import INDEX_FILE, ShardError, ShardIndex
from data_prep.tokenizer_id import TokenizerId

_CHUNK = 1 << 20


def local_path(data_dir: str) -> str | None:
    """The local directory of a plain path or a ``file:`` URL, else None (it must be fetched)."""
    pr = urlparse(data_dir)
    if pr.scheme == "":
        return data_dir
    if pr.scheme == "file":
        return pr.path
    return None


def load_index(data_dir: str) -> ShardIndex:
    """index.json of a local shard directory or of a URL prefix (one line naming it when unreadable)."""
    local = local_path(data_dir)
    if local is not None:
        return ShardIndex.load(local)
    url = join(data_dir, INDEX_FILE)
    try:
        raw = read_url(url)
    except (OSError, ValueError) as e:
        raise DataPrepError(f"data.dir={data_dir!r}: cannot fetch {url} ({' '.join(str(e).split())[:200]})") from None
    return ShardIndex.parse(data_dir, raw, url)


def tokenizer_path(data_dir: str, index: ShardIndex | None = None, cache_dir: str = "") -> str:
    """The local tokenizer file of a shard build: in place, or fetched (and checked) through the cache."""
    index = index or load_index(data_dir)
    tok = index.raw["tokenizer"]
    local = local_path(data_dir)
    if local is not None:
        return os.path.join(local, tok["file"])
    return ShardCache(data_dir, cache_dir).fetch(tok["file"], tok.get("sha256"))


def shards_tokenizer(index: ShardIndex, owner: str, cache_dir: str = "") -> TokenizerId:
    """The tokenizer index.json records (file, sha256, kind, vocabulary); a URL build's file is fetched
    through the cache only if ``check_same_tokenizer`` must compare vocabularies."""
    tok = index.raw["tokenizer"]
    local = local_path(index.data_dir)
    where = os.path.join(local, tok["file"]) if local is not None else join(index.data_dir, tok["file"])
    return TokenizerId(
        owner,
        where,
        tok.get("sha256"),
        tok.get("kind"),
        tok.get("vocab_size"),
        lambda: tokenizer_path(index.data_dir, index, cache_dir),
    )


def join(prefix: str, name: str) -> str:
    """The URL of file ``name`` under the URL prefix ``prefix``."""
    if prefix.startswith("pipe:"):
        if "{}" not in prefix:
            raise ShardError(f"data.dir={prefix!r}: a pipe: command needs {{}} where the file name goes")
        return prefix.replace("{}", name)
    return prefix.rstrip("/") + "/" + name


def open_url(url: str):
    """A readable binary stream of ``url`` (webdataset's ``gopen``; s3:// through the AWS CLI)."""
    from webdataset.gopen import gopen

    if url.startswith("s3://"):
        url = f"pipe:aws s3 cp --only-show-errors {url} -"
    return gopen(url, "rb")


def read_url(url: str) -> bytes:
    """The whole content of ``url``; OSError/ValueError (webdataset's) when it cannot be read."""
    stream = open_url(url)
    try:
        data = stream.read()
    finally:
        stream.close()  # a pipe's exit status is checked here: curl -f exits 22 on a 404
    return data


def default_cache_dir(prefix: str) -> str:
    root = os.environ.get("MODERNALBERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modernalbert")
    return os.path.join(root, "shards", hashlib.sha256(prefix.encode()).hexdigest()[:16])


class ShardCache:
    """The node-local copies of the shards under one URL prefix (see the module docstring)."""

    def __init__(self, prefix: str, cache_dir: str = "", limit_bytes: int = 50 << 30) -> None:
        self.prefix, self.limit = prefix, limit_bytes
        self.dir = cache_dir or default_cache_dir(prefix)
        os.makedirs(self.dir, exist_ok=True)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def fetch(self, name: str, sha256: str | None) -> str:
        """The local path of shard ``name``, downloaded (and verified) first if it is not cached."""
        with self._lock:
            pending = self._pending.pop(name, None)
        if pending is not None:
            return pending.result()  # the prefetch's download, or its error
        return self._fetch(name, sha256)

    def drop(self, name: str) -> None:
        """Forget the cached copy of ``name`` (it failed its check when opened): the next fetch downloads it."""
        _remove(os.path.join(self.dir, name))

    def prefetch(self, name: str, sha256: str | None) -> None:
        """Start fetching ``name`` in the background (errors surface at its ``fetch``)."""
        with self._lock:
            if name in self._pending or os.path.isfile(os.path.join(self.dir, name)):
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
            self._pending[name] = self._pool.submit(self._fetch, name, sha256)

    def _fetch(self, name: str, sha256: str | None) -> str:
        path = os.path.join(self.dir, name)
        if os.path.isfile(path):
            os.utime(path)  # recently used
            return path
        os.makedirs(os.path.join(self.dir, ".locks"), exist_ok=True)
        with open(os.path.join(self.dir, ".locks", name), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait and find the file
            if os.path.isfile(path):
                os.utime(path)
                return path
            url = join(self.prefix, name)
            problem = ""
            for _ in range(2):  # a failed or corrupt download is fetched once more
                problem = self._download(url, path, sha256)
                if not problem:
                    break
            if problem:
                raise ShardError(f"shard {name}: {problem} (fetched twice from {url})")
        self._evict(keep=path)
        return path

    def _download(self, url: str, path: str, sha256: str | None) -> str:
        """Download to a temp name, check, rename into place; returns what went wrong, or ''."""
        tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
        digest = hashlib.sha256()
        try:
            stream = open_url(url)
            try:
                with open(tmp, "wb") as out:
                    while block := stream.read(_CHUNK):
                        digest.update(block)
                        out.write(block)
            finally:
                stream.close()
        except (OSError, ValueError) as e:  # curl/pipe exit status, connection errors
            _remove(tmp)
            return f"download failed ({' '.join(str(e).split())[:200]})"
        if sha256 is not None and digest.hexdigest() != sha256:
            size = os.path.getsize(tmp)
            _remove(tmp)
            return (
                f"downloaded {size:,} bytes with sha256 {digest.hexdigest()[:12]}… != {sha256[:12]}… in "
                "index.json (truncated or changed at the source?)"
            )
        os.replace(tmp, path)
        return ""

    def _evict(self, keep: str) -> None:
        """Remove least recently used shards until the cache fits its limit (never ``keep``)."""
        with open(os.path.join(self.dir, ".locks", ".evict"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files = []
            for n in os.listdir(self.dir):
                p = os.path.join(self.dir, n)
                if n.endswith(".tar") and os.path.isfile(p):
                    st = os.stat(p)
                    files.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in files)
            for _, size, p in sorted(files):
                if total <= self.limit:
                    break
                if p != keep:
                    _remove(p)
                    total -= size


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
