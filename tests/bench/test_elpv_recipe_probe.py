"""bench/elpv_recipe_probe.py: each variant is the example config with only its overrides changed,
every config it writes is one edgepipe accepts, and the table's means are over that variant's seeds."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import elpv_recipe_probe as probe

from edgepipe.pipeline.config import load_config


def test_a_variant_changes_only_its_overrides_and_the_seed():
    base = probe.config_for({}, 0)
    cfg = probe.config_for(probe.VARIANTS["image_size 160"], 2)
    assert cfg["model"] == {**base["model"], "image_size": 160} and cfg["seed"] == 2
    assert cfg["finetune"] == base["finetune"] and cfg["targets"] == base["targets"]
    assert cfg["finetune"]["augment"]["flips"] is True  # the example's opt-in survives an override


def test_every_variant_is_a_valid_build_config(tmp_path):
    for name, overrides in probe.VARIANTS.items():
        path = tmp_path / f"{len(name)}-{abs(hash(name))}.yaml"
        path.write_text(yaml.safe_dump(probe.config_for(overrides, 1)))
        assert load_config(path).seed == 1, name


def test_the_table_means_each_variant_over_its_own_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "RESULTS", tmp_path / "probe")
    row = {"epochs_run": 3, "planned_epochs": 3, "best_epoch": 3, "val_accuracy": 0.8, "wall_s": 1.0}
    probe.write_table([{**row, "variant": "a", "seed": 0, "test_accuracy": 0.80},
                       {**row, "variant": "a", "seed": 1, "test_accuracy": 0.90},
                       {**row, "variant": "b", "seed": 0, "test_accuracy": 0.50}])
    table = (tmp_path / "probe.md").read_text()
    assert "| a | 0 1 | 80.00% | 85.00% |" in table and "| b | 0 | 80.00% | 50.00% |" in table
