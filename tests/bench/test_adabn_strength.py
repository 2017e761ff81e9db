"""bench/adabn_strength.py: a seed's release is the field bench's config with only the seed and its
folder changed, and the table's changes are against release 1 (strength 0) of the same seed."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import adabn_strength as bench

from edgepipe.pipeline.config import load_config


def test_a_seed_changes_only_the_seed_and_the_build_folder(tmp_path):
    base = yaml.safe_load(bench.CONFIG.read_text())
    cfg = bench.config_for(2)
    assert cfg["seed"] == 2 and cfg["output_dir"].endswith("build/elpv-mono-s2")
    assert {k: v for k, v in cfg.items() if k not in ("seed", "name", "output_dir")} == \
        {k: v for k, v in base.items() if k not in ("seed", "name", "output_dir")}
    assert bench.build_dir(0).name == "elpv-mono"  # seed 0 is the field bench's release 1
    path = tmp_path / "s2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path).seed == 2


def test_the_table_compares_each_strength_with_its_own_seeds_release(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "strength")
    row = {"mono_images": 200, "poly_images": 800, "adapt_s": 1.0}
    bench.write_table([{**row, "seed": 0, "strength": 0.0, "mono": 0.80, "poly": 0.30},
                       {**row, "seed": 0, "strength": 0.5, "mono": 0.79, "poly": 0.40},
                       {**row, "seed": 1, "strength": 0.0, "mono": 0.90, "poly": 0.20},
                       {**row, "seed": 1, "strength": 0.5, "mono": 0.90, "poly": 0.40}])
    table = (tmp_path / "strength.md").read_text()
    assert "| 0 | 0.5 | 79.00% (200) | 40.00% (800) | -1.0 pt | +10.0 pt | 1 s |" in table
    assert "| 0.5 | 0 1 | -0.5 pt | +15.0 pt |" in table


def test_the_notes_written_below_the_marker_survive_a_rewrite(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "strength")
    row = {"mono_images": 200, "poly_images": 800, "adapt_s": 1.0, "seed": 0, "mono": 0.8, "poly": 0.3}
    bench.write_table([{**row, "strength": 0.0}])
    md = tmp_path / "strength.md"
    md.write_text(md.read_text() + "\nReading: kept.\n")
    bench.write_table([{**row, "strength": 0.0}, {**row, "strength": 1.0, "poly": 0.6}])
    text = md.read_text()
    assert "Reading: kept." in text and "+30.0 pt" in text and text.count(bench.NOTES) == 1
