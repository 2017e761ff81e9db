"""Which change reruns which stage: the input-key partition, checked stage by stage."""

import pytest

import edgepipe.pipeline.manifest
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.keys import stage_inputs, stage_key
from edgepipe.pipeline.manifest import Manifest

CORE = ("finetune", "adapt", "export", "quantize", "verify", "previous", "explain", "reference", "report")
BASE = {"name": "k", "targets": [{"name": "onnxruntime"}, {"name": "openvino"}]}


@pytest.fixture
def recorded(tmp_path):
    """A manifest in which every stage recorded one small file: enough to compute every key."""
    manifest = Manifest.open(BuildConfig(name="k", output_dir=tmp_path / "out"))
    for stage, names in (("finetune", ("checkpoint", "curve", "metrics")), ("export", ("onnx",)),
                         ("quantize", ("calibration",)), ("verify", ("results",)), ("explain", ("gallery",)),
                         ("reference", ("onnxruntime-int8",)), ("report", ("report_json",))):
        outputs = {name: tmp_path / "out" / stage / name for name in names}
        for name, path in outputs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{stage} {name}")
        manifest.record_stage(stage, outputs, {})
    # no adapt or previous entry: a folder built before those stages existed keeps working
    return manifest


def keys(manifest, config=BASE, dataset="d" * 64) -> dict:
    cfg = BuildConfig.model_validate({**config, "output_dir": str(manifest.out_dir)})
    return {s: stage_key(stage_inputs(s, cfg, manifest, CORE, lambda: dataset)) for s in CORE}


def rerun(manifest, **changes) -> set[str]:
    before, after = keys(manifest), keys(manifest, {**BASE, **changes})
    return {s for s in CORE if before[s] != after[s]}


@pytest.mark.parametrize("changes, stages", [
    ({"gates": {"min_agreement": 0.5}}, {"report"}),
    ({"targets": [{"name": "onnxruntime", "gates": {"min_agreement": 0.5}}, {"name": "openvino"}]}, {"report"}),
    ({"calibration": {"size": 100}}, {"quantize", "report"}),
    ({"calibration": {"weight_rounding": "nearest"}}, {"quantize", "report"}),
    ({"fallback": {"max_float_layers": 2}}, {"quantize", "report"}),
    ({"targets": [{"name": "onnxruntime", "calibration_method": "entropy"}, {"name": "openvino"}]}, {"quantize", "report"}),
    ({"verify": {"runs": 50}}, {"verify", "report"}),
    # the fallback times candidates with them; the drift references run the artifacts with them
    ({"verify": {"threads": 1}}, {"quantize", "verify", "reference", "report"}),
    ({"export": {"opset": 17}}, {"export", "report"}),
    ({"finetune": {"epochs": 1}}, {"finetune", "report"}),
    ({"model": {"image_size": 160}}, {"finetune", "export", "report"}),
    ({"seed": 3}, {"finetune", "quantize", "report"}),
    ({"name": "other"}, {"report"}),
    ({"report": {"gallery": 4}}, {"explain", "report"}),
    ({"tracking": {"mlflow": "mlruns"}}, set()),  # where runs are logged is not the build's identity
])
def test_a_config_change_reruns_the_stages_that_read_it(recorded, changes, stages):
    assert rerun(recorded, **changes) == stages


def test_new_dataset_files_rerun_every_stage_that_reads_images(recorded):
    before, after = keys(recorded), keys(recorded, dataset="e" * 64)
    assert {s for s in CORE if before[s] != after[s]} == {"finetune", "adapt", "export", "quantize", "verify",
                                                          "previous", "explain", "reference"}


def test_a_new_upstream_output_reruns_its_readers_only(recorded):
    before = keys(recorded)
    ckpt = recorded.out_dir / "finetune" / "checkpoint"
    ckpt.write_text("retrained")
    outputs = {n: recorded.out_dir / "finetune" / n for n in ("checkpoint", "curve", "metrics")}
    recorded.record_stage("finetune", outputs, {})
    after = keys(recorded)
    # quantize reads the ONNX, not this; explain takes its heat maps from the checkpoint; the report
    # reads the curve and metrics, which did not change (the new checkpoint reaches it through verify);
    # adapt starts from the checkpoint (without an adapt section it writes nothing, so no one downstream
    # sees a change through it)
    assert {s for s in CORE if before[s] != after[s]} == {"adapt", "export", "verify", "explain"}


def test_a_new_adapted_checkpoint_reruns_what_reads_the_float_model_only_with_an_adapt_section(recorded, tmp_path):
    (tmp_path / "field").mkdir()
    (tmp_path / "field" / "a.png").write_bytes(b"png")
    adapt = {**BASE, "adapt": {"images": str(tmp_path / "field")}}
    ckpt = tmp_path / "out" / "adapt" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_text("adapted 1")
    recorded.record_stage("adapt", {"checkpoint": ckpt}, {})
    plain, before = keys(recorded), keys(recorded, adapt)
    ckpt.write_text("adapted 2")
    recorded.record_stage("adapt", {"checkpoint": ckpt}, {})
    assert {s for s in CORE if before[s] != keys(recorded, adapt)[s]} == {"export", "verify", "explain", "report"}
    assert keys(recorded) == plain  # without the section nothing reads what adapt once wrote


@pytest.mark.parametrize("package, stages", [
    ("openvino", {"quantize", "verify", "previous", "reference"}),  # previous: runs the last release's artifacts
    ("onnxslim", {"export"}),
    ("timm", {"finetune", "adapt", "verify", "previous", "explain"}),
    ("captum", {"explain"}),
    ("matplotlib", {"explain", "report"}),  # the heat maps' colours, the report's charts
])
def test_a_tool_upgrade_reruns_the_stages_that_use_it(recorded, monkeypatch, package, stages):
    before = keys(recorded)
    real = edgepipe.pipeline.manifest.package_version
    monkeypatch.setattr(edgepipe.pipeline.manifest, "package_version", lambda n: "99.0" if n == package else real(n))
    after = keys(recorded)
    assert {s for s in CORE if before[s] != after[s]} == stages

