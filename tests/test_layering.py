"""The packages as layers: every import goes to a strictly lower layer (ARCHITECTURE.md, "Packages as layers").

Every Python file of the checkout is parsed and every import statement is read, wherever it sits: at the
top, indented under ``if``/``try``, or inside a function (a lazy import is still a dependency). An import
of another project package must go to a lower layer than the importer's own; packages on the same layer
do not import each other. A top-level directory with Python files that ``LAYERS`` does not place is an
error too, so a new package is placed on purpose. The helpers with one home are also imported through
that home only (``check``/``ConfigError`` from ``config_check``, ``OutputDir`` from ``fileio``).
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# lower number = lower layer; a package may import only packages with a smaller number
LAYERS = {
    "config_check": 0,  # check(), ConfigError: no project imports
    "fileio": 0,  # atomic writes, OutputDir, sha256
    "scoring": 0,  # numpy metrics, intervals, stratified subsets
    "data_prep": 1,  # corpora → tokenizer → shards
    "model": 1,  # the network on one device
    "pretrain": 2,  # training, parallelism, checkpoints
    "finetune": 2,  # task LoRAs, LoRA-Mixer, the one fine-tuning loop
    "tools": 3,  # consolidate, merge, export, init from a teacher
    "evaluation": 3,  # GLUE, SQuAD 2.0, BEIR runners (fine-tune through finetune.loop)
    "benchmarks": 4,  # entry points: no library code imports them
    "studies": 4,
    "scripts": 4,
    "tests": 5,  # the tests import the studies' helpers
}
SKIP_DIRS = {"runs", "data", "build", "docs"}  # outputs and pages (ignored or without Python files)

# helpers with one home: (module a statement must not import the name from, name, its home)
WRONG_DOORS = [
    ("model.config", "check", "config_check"),
    ("model.config", "ConfigError", "config_check"),
    ("model.native_format", "OutputDir", "fileio"),
]


def _top_dirs(root: str) -> list[str]:
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(".") or name in SKIP_DIRS or name.endswith(".egg-info") or not os.path.isdir(path):
            continue
        if any(f.endswith(".py") for _, _, files in os.walk(path) for f in files):
            out.append(name)
    return out


def _imports(path: str):
    """(line, module, imported names) of every absolute import in the file, at any depth."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, tuple(a.name for a in node.names)


def layering_faults(root: str) -> list[str]:
    """One line per import that goes up or sideways, per unplaced directory, per helper taken by a wrong door."""
    faults = []
    packages = _top_dirs(root)
    for pkg in packages:
        if pkg not in LAYERS:
            faults.append(f"{pkg}/: not placed in tests/test_layering.py LAYERS (give it a layer)")
    for pkg in packages:
        for dirpath, dirnames, files in os.walk(os.path.join(root, pkg)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                for line, module, names in _imports(path):
                    top = module.split(".")[0]
                    if top in LAYERS and top != pkg and pkg in LAYERS and LAYERS[top] >= LAYERS[pkg]:
                        faults.append(
                            f"{rel}:{line}: {pkg} (layer {LAYERS[pkg]}) imports {module} (layer {LAYERS[top]})"
                        )
                    for wrong, helper, home in WRONG_DOORS:
                        if module == wrong and helper in names:
                            faults.append(f"{rel}:{line}: {helper} imported from {wrong}; its one home is {home}")
    return faults


def test_the_checkout_has_no_upward_or_sideways_import():
    assert layering_faults(REPO) == []


def test_every_layer_names_a_real_package():
    assert set(_top_dirs(REPO)) == set(LAYERS)


def _tree(tmp_path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize(
    "source",
    [
        "from evaluation.glue import run\n",  # at the top
        "def f():\n    from evaluation import glue\n",  # inside a function (a lazy import)
        "try:\n    import evaluation.sampling as s\nexcept ImportError:\n    pass\n",  # indented
    ],
)
def test_a_planted_upward_import_is_reported(tmp_path, source):
    root = _tree(tmp_path, {"finetune/planted.py": source, "evaluation/glue.py": "x = 1\n"})
    faults = layering_faults(root)
    assert len(faults) == 1, faults
    assert faults[0].startswith("finetune/planted.py:") and "finetune (layer 2) imports evaluation" in faults[0]


def test_sideways_imports_and_unplaced_packages_are_reported(tmp_path):
    root = _tree(
        tmp_path,
        {
            "tools/a.py": "import evaluation.glue\n",  # same layer
            "newpkg/b.py": "import model\n",
            # its own package and a lower layer: fine
            "model/c.py": "from model.config import ModelConfig\nfrom fileio import atomic_write\n",
        },
    )
    faults = layering_faults(root)
    assert any("tools (layer 3) imports evaluation.glue (layer 3)" in f for f in faults), faults
    assert any(f.startswith("newpkg/: not placed") for f in faults), faults
    assert not any(f.startswith("model/") for f in faults), faults


def test_a_helper_taken_by_its_old_door_is_reported(tmp_path):
    root = _tree(tmp_path, {"tools/d.py": "from model.config import ModelConfig, check\n"})
    assert layering_faults(root) == ["tools/d.py:1: check imported from model.config; its one home is config_check"]
