"""The five GLUE tasks the runner evaluates: their file layouts, labels and metrics, read strictly.

Two sources, one result (``{split: [Example]}``):

* a local directory with one folder per task (the offline copies this project is tested on; layouts
  below, tab-separated, UTF-8). A known header line is skipped wherever it appears; any other line that
  does not parse is an error naming the file and the line.

  | task  | files                  | columns                                                   |
  |-------|------------------------|-----------------------------------------------------------|
  | CoLA  | train, dev             | sentence, label (0/1)                                     |
  | SST-2 | train, dev             | label (0/1), sentence                                     |
  | STS-B | train, dev, test       | 7 GLUE metadata columns, sentence1, sentence2, score 0–5  |
  | MRPC  | train, dev, test       | label (0/1), id1, id2, sentence1, sentence2               |
  | RTE   | train, dev, test       | index, sentence1, sentence2, entailment/not_entailment    |

* the official GLUE through HF ``datasets`` (``nyu-mll/glue``; needs network access and
  ``pip install datasets``): train and validation (= dev); GLUE's test labels are hidden, so there
  is no test split.

Label indices follow the HF GLUE convention (RTE: 0 entailment, 1 not_entailment; MRPC: 1 paraphrase).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class GlueDataError(ValueError):
    """A task directory with another layout, or a malformed row: the message names the file and line."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    hf_name: str  # the ``nyu-mll/glue`` config name
    text_fields: tuple[str, ...]  # the HF column names of the text(s)
    labels: tuple[str, ...]  # class names by index; () for regression
    metrics: tuple[str, ...]
    main: tuple[str, ...]  # GLUE's task score: the mean of these metrics
    splits: tuple[str, ...]  # local files
    columns: int  # tab-separated fields per local row
    text_cols: tuple[int, ...]  # which local fields are the texts
    label_col: int
    header: str  # the first field of a header line (after a BOM), skipped wherever it appears

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "CoLA",
            "cola",
            ("sentence",),
            ("unacceptable", "acceptable"),
            ("mcc",),
            ("mcc",),
            ("train", "dev"),
            2,
            (0,),
            1,
            "",
        ),
        TaskSpec(
            "SST-2",
            "sst2",
            ("sentence",),
            ("negative", "positive"),
            ("accuracy",),
            ("accuracy",),
            ("train", "dev"),
            2,
            (1,),
            0,
            "",
        ),
        TaskSpec(
            "STS-B",
            "stsb",
            ("sentence1", "sentence2"),
            (),
            ("pearson", "spearman"),
            ("pearson", "spearman"),
            ("train", "dev", "test"),
            10,
            (7, 8),
            9,
            "index",
        ),
        TaskSpec(
            "MRPC",
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            ("accuracy", "f1"),
            ("accuracy", "f1"),
            ("train", "dev", "test"),
            5,
            (3, 4),
            0,
            "Quality",
        ),
        TaskSpec(
            "RTE",
            "rte",
            ("sentence1", "sentence2"),
            ("entailment", "not_entailment"),
            ("accuracy",),
            ("accuracy",),
            ("train", "dev", "test"),
            4,
            (1, 2),
            3,
            "index",
        ),
    )
}


@dataclass(frozen=True)
class Example:
    texts: tuple[str, ...]
    label: float  # class index, or the regression target


def target_scale(spec: TaskSpec, train_labels) -> float:
    """The divisor that puts a regression task's training targets in [-1, 1]: the largest |target| (STS-B: 5).
    1.0 for a classification task, or when every target is 0."""
    if not spec.is_regression:
        return 1.0
    return max((abs(float(x)) for x in train_labels), default=0.0) or 1.0


TASKS_SYNTAX = "comma- or space-separated: --tasks SST-2,MRPC or --tasks SST-2 MRPC"


def _spelling(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def task_spec(name: str) -> TaskSpec:
    """The GLUE task ``name`` names, in any case and with or without the hyphen: ``SST-2``, ``sst2`` (the HF
    config name), ``sst-2``."""
    for spec in TASKS.values():
        if _spelling(name) in (_spelling(spec.name), _spelling(spec.hf_name)):
            return spec
    raise GlueDataError(f"--tasks {name!r}: not a GLUE task; allowed: {', '.join(TASKS)} ({TASKS_SYNTAX})")


def split_tasks(values: str | list[str], whole=lambda item: False) -> list[str]:
    """``--tasks`` as typed, one argument or several, each comma-separated: ``["SST-2,MRPC", "RTE"]`` →
    ``["SST-2", "MRPC", "RTE"]``. Blanks and repeats are dropped; an item for which ``whole(item)`` holds
    (e.g. an existing directory whose name has a comma) is kept as it is."""
    out: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        for item in [value] if whole(value) else value.split(","):
            if item.strip() and item.strip() not in out:
                out.append(item.strip())
    return out


def task_names(values: str | list[str]) -> list[str]:
    """GLUE tasks from ``--tasks`` in their canonical names: ``sst2,mrpc`` → ``["SST-2", "MRPC"]``; an unknown
    name raises ``GlueDataError`` naming the allowed ones."""
    return list(dict.fromkeys(task_spec(t).name for t in split_tasks(values)))


def _label(spec: TaskSpec, raw: str, where: str) -> float:
    raw = raw.strip()
    if spec.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise GlueDataError(f"{where}: score {raw!r} is not a number") from None
        if not 0.0 <= value <= 5.0:
            raise GlueDataError(f"{where}: score {value} outside [0, 5]")
        return value
    if raw in spec.labels:
        return float(spec.labels.index(raw))
    if raw in ("0", "1"):
        return float(raw)
    raise GlueDataError(f"{where}: label {raw!r}: allowed: 0, 1{''.join(', ' + x for x in spec.labels)}")


def read_split(spec: TaskSpec, path: str) -> list[Example]:
    """One local file, strictly: every line has the task's field count and a valid label."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise GlueDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, start=1):
        fields = line.rstrip("\r").split("\t")
        where = f"{path}:{n}"
        if spec.header and fields[0].lstrip("\ufeff") == spec.header:
            continue
        if len(fields) != spec.columns:
            raise GlueDataError(
                f"{where}: {len(fields)} tab-separated fields, the {spec.name} layout has {spec.columns}"
            )
        texts = tuple(fields[c].strip() for c in spec.text_cols)
        if not all(texts):
            raise GlueDataError(f"{where}: empty text field")
        out.append(Example(texts, _label(spec, fields[spec.label_col], where)))
    if not out:
        raise GlueDataError(f"{path}: no examples")
    return out


def load_local(name: str, glue_dir: str) -> dict[str, list[Example]]:
    """``{split: examples}`` from ``glue_dir/<task>/<split>.tsv``."""
    spec = task_spec(name)
    task_dir = os.path.join(glue_dir, spec.name)
    if not os.path.isdir(task_dir):
        raise GlueDataError(
            f"{task_dir}: no such task directory (--glue-dir holds one folder per task: {', '.join(TASKS)})"
        )
    out = {}
    for split in spec.splits:
        path = os.path.join(task_dir, f"{split}.tsv")
        if not os.path.isfile(path):
            raise GlueDataError(f"{path}: missing (the {spec.name} layout has {', '.join(spec.splits)})")
        out[split] = read_split(spec, path)
    return out


def from_rows(name: str, rows_by_split: dict[str, object]) -> dict[str, list[Example]]:
    """HF ``datasets`` splits (any iterable of dicts with the GLUE columns) → ``{train, dev}``."""
    spec = task_spec(name)
    out = {}
    for hf_split, split in (("train", "train"), ("validation", "dev")):
        if hf_split not in rows_by_split:
            raise GlueDataError(f"HF GLUE {spec.hf_name}: no {hf_split!r} split")
        examples = []
        for i, row in enumerate(rows_by_split[hf_split]):
            missing = [c for c in (*spec.text_fields, "label") if c not in row]
            if missing:
                raise GlueDataError(f"HF GLUE {spec.hf_name} {hf_split} row {i}: no column {missing[0]!r}")
            label = float(row["label"])
            if not spec.is_regression and label not in (0.0, 1.0):
                raise GlueDataError(f"HF GLUE {spec.hf_name} {hf_split} row {i}: label {row['label']!r}")
            examples.append(Example(tuple(str(row[c]) for c in spec.text_fields), label))
        out[split] = examples
    return out


def load_hf(name: str) -> dict[str, list[Example]]:  # pragma: no cover - needs network access
    """The official GLUE task through HF ``datasets`` (downloaded once into its cache)."""
    spec = task_spec(name)
    try:
        import datasets
    except ImportError:
        raise GlueDataError("--glue-source hf needs the `datasets` package: pip install datasets") from None
    return from_rows(name, datasets.load_dataset("nyu-mll/glue", spec.hf_name))
