"""bench/field_loop_update.py: another split seed changes only the seed, the names and the folders of
the four builds; seed 0 is the committed configs."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import field_loop_update as bench

from edgepipe.pipeline.config import load_config


def test_seed_0_is_the_committed_configs_and_names():
    assert bench.folders(0) == {"release": "elpv-mono", "adabn": "elpv-mono-adabn", "update": "elpv-mono-update",
                                "both": "elpv-mono-poly"}
    assert {k: p.name for k, p in bench._configs(0).items()} == \
        {"release": "elpv_mono.yaml", "adabn": "elpv_mono_adabn.yaml", "both": "elpv_mono_poly.yaml"}


def test_another_seed_changes_only_the_seed_and_where_each_build_goes(tmp_path, monkeypatch):
    import adabn_strength
    import field_loop_select

    for module in (bench, field_loop_select, adabn_strength):
        monkeypatch.setattr(module, "FIELD", tmp_path)
    configs = bench._configs(2)
    both = yaml.safe_load(configs["both"].read_text())
    committed = yaml.safe_load((bench.REPO / "bench/configs/elpv_mono_poly.yaml").read_text())
    moved = ("seed", "name", "output_dir", "bundle", "dataset")
    assert {k: v for k, v in both.items() if k not in moved} == {k: v for k, v in committed.items() if k not in moved}
    assert both["seed"] == 2 and both["name"] == "elpv-mono-poly-s2" and both["dataset"]["field"]["root"] == str(bench.LABELLED)
    assert {k: v for k, v in both["dataset"].items() if k != "field"} == \
        {k: v for k, v in committed["dataset"].items() if k != "field"}
    assert load_config(configs["both"]).seed == 2
    update = dict(bench._commands(2))["update"]
    assert update[-4:] == ["--from", "build/elpv-mono-s2", "--data", str(bench.LABELLED)]
    assert update[2] == str(configs["release"]) and load_config(configs["release"]).seed == 2


def test_goal_rows_compare_the_update_with_both_on_poly_and_with_release_1_on_mono_then_average():
    def row(seed, name, artifact, mono, poly):
        return {"seed": seed, "row": name, "artifact": artifact, "mono": mono, "poly": poly, "gates": "pass"}

    rows = []
    for seed, (release_mono, both_poly, update_mono, update_poly) in {1: (0.80, 0.85, 0.81, 0.84),
                                                                      2: (0.90, 0.70, 0.88, 0.73)}.items():
        for artifact in ("onnxruntime-fp32", "onnxruntime-int8"):
            rows += [row(seed, "release", artifact, release_mono, 0.3), row(seed, "both", artifact, 0.5, both_poly),
                     row(seed, "update", artifact, update_mono, update_poly)]
    lines = bench._goal_rows(rows, [1, 2])
    assert lines[:3] == ["| 1 | onnxruntime-fp32 | -1.0 pt | +1.0 pt | pass |",
                         "| 2 | onnxruntime-fp32 | +3.0 pt | -2.0 pt | pass |",
                         "| mean | onnxruntime-fp32 | +1.0 pt | -0.5 pt | |"]
    assert len(lines) == 6 and lines[5].startswith("| mean | onnxruntime-int8 |")
