"""bench/field_loop_select.py: a seed's AdaBN build is its release's config plus the adapt section,
and the table compares the bundle run after the verdict with release 1 on the same windows."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import field_loop_select as bench

from edgepipe.pipeline.config import load_config


def test_a_seeds_adabn_build_is_its_release_plus_the_adapt_section(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "FIELD", tmp_path)
    monkeypatch.setattr(bench.adabn_strength, "FIELD", tmp_path)
    release, adapted = bench.configs(2)
    r, a = yaml.safe_load(release.read_text()), yaml.safe_load(adapted.read_text())
    assert a.pop("adapt") == {"images": str(bench.UNLABELLED)}
    assert a.pop("name") == "elpv-mono-s2-adabn" and a.pop("output_dir").endswith("build/elpv-mono-s2-adabn")
    assert a == {k: v for k, v in r.items() if k not in ("name", "output_dir")} and r["seed"] == 2
    assert load_config(adapted).adapt.images == bench.UNLABELLED
    assert [p.name for p in bench.configs(0)] == ["elpv_mono.yaml", "elpv_mono_adabn.yaml"]  # the field bench's


def _run(running, stream, window, after, release, keep=0, switch=0, none=0):
    return {"running": running, "stream": stream, "window": window, "keep": keep, "switch": switch,
            "drift, no switch": none, "accuracy_release 1": release, "accuracy_AdaBN": 0.5, "accuracy_after": after}


def test_the_table_pools_the_verdicts_and_compares_with_release_1_on_the_same_windows(tmp_path):
    def seed(release_mono, after_poly):
        runs = [_run("release 1", "mono", 200, release_mono, release_mono, keep=50),
                _run("release 1", "poly", 200, after_poly, 0.30, switch=49, none=1)]
        return {"images": {"mono": 274, "poly": 800},
                "precisions": {"fp32": {"accuracy": {"release 1": {"mono": 0.84, "poly": 0.31},
                                                     "AdaBN": {"mono": 0.81, "poly": 0.60}}, "runs": runs}}}

    out = {"date": "2026-12-03", "machine": {"cpu": "test"}, "seeds": {"0": seed(0.85, 0.60), "1": seed(0.80, 0.50)}}
    bench.write(out, tmp_path / "select")
    table = (tmp_path / "select.md").read_text()
    assert "| fp32 | release 1 | 84.0 / 84.0 % | 84.0 % | 31.0 / 31.0 % | 31.0 % |" in table
    assert "| fp32 | release 1 | mono | 200 | 100 | 0 | 0 | +0.00 / +0.00 pt | +0.00 pt |" in table
    assert "| fp32 | release 1 | poly | 200 | 0 | 98 | 2 | +30.00 / +20.00 pt | +25.00 pt |" in table
    assert bench.adabn_strength.NOTES in table
