import os
import subprocess

import pytest

from edgepipe.core.files import atomic_output
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import Manifest, sweep_stale_temps


@pytest.fixture
def manifest(tmp_path):
    return Manifest.open(BuildConfig(name="m", output_dir=tmp_path / "out"))


def _write(manifest, rel, text="x"):
    path = manifest.out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_stage_is_up_to_date_only_once_complete_with_its_key_and_intact_outputs(manifest):
    inputs = {"config.export": "a", "finetune.checkpoint": "b"}
    assert manifest.stale_reason("export", "k1", inputs) == "not built yet"
    manifest.begin_stage("export", "k1")
    assert manifest.stale_reason("export", "k1", inputs) == "the last run was interrupted in this stage"
    manifest.record_stage("export", {"onnx": _write(manifest, "export/model.onnx")}, {})
    assert manifest.stale_reason("export", "k1", inputs) == "the last run did not complete this stage"
    manifest.complete_stage("export", "k1", inputs)
    assert manifest.stale_reason("export", "k1", inputs) is None
    assert Manifest.open(BuildConfig(name="m", output_dir=manifest.out_dir)).stale_reason("export", "k1", inputs) is None

    assert manifest.stale_reason("export", "k2", {**inputs, "config.export": "z"}) == "inputs changed: config.export"
    _write(manifest, "export/model.onnx", "partial")
    assert manifest.stale_reason("export", "k1", inputs) == "output export/model.onnx is missing or changed"
    (manifest.out_dir / "export" / "model.onnx").unlink()
    assert manifest.stale_reason("export", "k1", inputs) == "output export/model.onnx is missing or changed"


def test_entries_from_before_input_keys_are_rebuilt(manifest):
    manifest.record_stage("finetune", {}, {})
    del manifest.data["stages"]["finetune"]["status"]
    assert manifest.stale_reason("finetune", "k", {}) == "built by an edgepipe without input keys"


def test_a_stage_that_records_nothing_completes_with_no_outputs(manifest):
    manifest.begin_stage("bundle", "k")
    manifest.complete_stage("bundle", "k", {})
    assert manifest.data["stages"]["bundle"]["outputs"] == {} and manifest.stale_reason("bundle", "k", {}) is None


def test_atomic_output_renames_only_a_finished_file(tmp_path):
    final = tmp_path / "a" / "model.onnx"
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        tmp.write_text("half")
        assert tmp.name == f".model.onnx.tmp-{os.getpid()}"
        raise RuntimeError("killed")
    assert not final.exists() and list(final.parent.iterdir()) == []
    final.write_text("old")
    with atomic_output(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # the old file stays whole until the new one is complete
    assert final.read_text() == "new" and list(final.parent.iterdir()) == [final]


def test_sweep_removes_only_dead_builds_temp_files(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "t").mkdir()
    dead_file = tmp_path / "t" / f".model.pt.tmp-{dead.pid}"
    dead_dir = tmp_path / f".model-ir.tmp-{dead.pid}"
    live = tmp_path / f".results.json.tmp-{os.getppid()}"
    other = tmp_path / ".cache.tmp-notapid"
    dead_file.write_text("x")
    dead_dir.mkdir()
    (dead_dir / "model.xml").write_text("x")
    live.write_text("x")
    other.write_text("x")
    assert sorted(sweep_stale_temps(tmp_path)) == sorted([dead_file, dead_dir])
    assert live.exists() and other.exists() and not dead_file.exists() and not dead_dir.exists()
