"""``python -m pretrain.train --print-config``: the resolved config, without training (issue 46)."""

from __future__ import annotations

import dataclasses
import json

import yaml

from conftest import run_cli
from pretrain.config import RunConfig, load_config

TINY = "pretrain/configs/tiny.yaml"


def test_print_config_prints_every_field_after_the_overrides_and_touches_nothing(tmp_path):
    run_dir, data_dir = tmp_path / "run", tmp_path / "no-shards-here"
    overrides = [f"run_dir={run_dir}", f"data.dir={data_dir}", "train.steps=7", "model.mol.top_k=1"]
    r = run_cli(["-m", "pretrain.train", "--config", TINY, "--print-config", *overrides])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    printed = yaml.safe_load(r.stdout)
    expected = json.loads(json.dumps(load_config(TINY, overrides).to_dict()))
    assert printed == expected  # every field, defaults included (checkpoint.resume is in no YAML file)
    assert printed["train"]["steps"] == 7 and printed["model"]["mol"]["top_k"] == 1
    assert printed["checkpoint"]["resume"] is True and printed["schedule"]["min_lr_ratio"] == 0.0
    assert list(printed) == [f.name for f in dataclasses.fields(RunConfig)]
    assert r.stdout.startswith(f"# resolved from {TINY} {' '.join(overrides)}")
    assert "config: {" not in r.stdout and not run_dir.exists() and not data_dir.exists()
    # what it prints is a config: loaded back, the same run
    again = tmp_path / "printed.yaml"
    again.write_text(r.stdout)
    assert load_config(str(again)).to_dict() == load_config(TINY, overrides).to_dict()


def test_print_config_validates(tmp_path):
    r = run_cli(["-m", "pretrain.train", "--config", TINY, "--print-config", "train.micro_batch_size=0"])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "error: train.micro_batch_size=0: must be >= 1"


def test_help_names_print_config_and_every_section():
    r = run_cli(["-m", "pretrain.train", "--help"])
    assert r.returncode == 0 and "--print-config" in r.stdout
    for f in dataclasses.fields(RunConfig):
        assert f"  {f.name}:" in r.stdout or f.name in r.stdout.split("top level:")[1], f.name
    assert "  train:      steps, global_batch_tokens, micro_batch_size" in r.stdout
