"""End to end through the command line, as a release pipeline would call it."""

import json

import pytest
import yaml
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.files import sha256_file
from tests.conftest import write_image

SMALL_ELPV = {
    "name": "elpv-small",
    "seed": 1,
    "output_dir": "out",
    "dataset": {"source": "elpv", "limit": 160},
    "model": {"image_size": 64},
    "finetune": {"warmup_epochs": 5, "epochs": 1, "batch_size": 16},
    "export": {"parity": {"images": 24}},
    "calibration": {"size": 16},
    "targets": [{"name": "onnxruntime", "precisions": ["fp32"]}],
    "verify": {"runs": 5, "warmup": 1},
}


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def one_line_error(result, code, fragment):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    cfg = root / "small.yaml"
    cfg.write_text(yaml.safe_dump(SMALL_ELPV))
    result = invoke("build", cfg)
    import shutil

    shutil.copytree(root / "out", root / "pristine")  # what _copy_build starts from, whatever tests did to out/
    return root, cfg, result


def test_build_writes_manifest_with_hashes_and_parity(small_build):
    root, _, result = small_build
    assert result.exit_code == 0, result.output
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["name"] == "elpv-small" and len(manifest["config_sha256"]) == 64
    assert manifest["dataset"]["sizes"] == {"train": 96, "val": 24, "test": 40}
    assert len(manifest["dataset"]["sha256"]) == 64 and len(manifest["dataset"]["split_sha256"]) == 64
    assert manifest["weights"]["sha256"].startswith("57934424")
    assert {"torch", "timm", "onnx", "onnxruntime"} <= set(manifest["tool_versions"])
    for stage in ("finetune", "export", "quantize", "verify", "report"):
        for out in manifest["stages"][stage]["outputs"].values():
            assert sha256_file(root / "out" / out["path"]) == out["sha256"]
    par = manifest["stages"]["export"]["metrics"]
    assert par["passed"] and par["images"] == 24 and par["max_abs_diff"] < 1e-3 and par["top1_agreement"] >= 0.99
    ft = json.loads((root / "out" / "finetune" / "metrics.json").read_text())
    assert 0 <= ft["test_accuracy"] <= 1 and ft == manifest["stages"]["finetune"]["metrics"]
    curve = json.loads((root / "out" / "finetune" / "curve.json").read_text())
    assert [c["phase"] for c in curve] == ["warmup"] * 5 + ["finetune"]


def test_parity_failure_exits_3_and_keeps_the_finetune_output(small_build):
    root, _, _ = small_build
    strict = dict(SMALL_ELPV, export={"parity": {"images": 8, "max_abs_diff": 1e-12}})
    cfg = root / "strict.yaml"
    cfg.write_text(yaml.safe_dump(strict))
    before = sha256_file(root / "out" / "finetune" / "model.pt")
    one_line_error(invoke("export", cfg), 3, "ONNX export does not match torch")
    assert sha256_file(root / "out" / "finetune" / "model.pt") == before
    assert json.loads((root / "out" / "export" / "parity.json").read_text())["passed"] is False
    # the ONNX that failed parity must not be quantized by a single-stage command
    one_line_error(invoke("quantize", cfg), 2, "the last run of export did not complete")


def test_build_report_has_the_reference_and_the_onnx_row(small_build):
    root, _, _ = small_build
    report = json.loads((root / "out" / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["torch-fp32", "onnxruntime-fp32"]
    assert report["rows"][1]["agreement"] == 1.0 and report["passed"]


def _copy_build(root, name, **changes):
    import shutil

    shutil.copytree(root / "pristine", root / name)
    cfg = root / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL_ELPV, "output_dir": name, **changes}))
    return cfg


def test_calibration_larger_than_train_split_exits_2(small_build):
    root, _, _ = small_build
    cfg = _copy_build(root, "bigcalib", calibration={"size": 500})
    one_line_error(invoke("quantize", cfg), 2, "calibration.size 500 is larger than the train split (96 images)")


def test_truncated_onnx_exits_2(small_build):
    root, _, _ = small_build
    cfg = _copy_build(root, "truncated")
    onnx_path = root / "truncated" / "export" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    one_line_error(invoke("quantize", cfg), 2, "model.onnx is missing or changed since the export stage wrote it")


def test_artifact_from_another_model_exits_2(small_build, tmp_path):
    import timm

    from edgepipe.pipeline.export import export_onnx

    root, _, _ = small_build
    cfg = _copy_build(root, "swapped")
    other = timm.create_model("tf_efficientnet_lite0", num_classes=2).eval()
    export_onnx(other, tmp_path / "other.onnx", 64, 18, True, True)
    (root / "swapped" / "targets" / "onnxruntime-fp32" / "model.onnx").write_bytes((tmp_path / "other.onnx").read_bytes())
    one_line_error(invoke("verify", cfg), 2, "changed since the quantize stage wrote it")


@pytest.mark.parametrize("targets, fragment", [
    ([{"name": "tflite"}], "targets.0: unknown target 'tflite': edgepipe builds for onnxruntime, openvino, tensorrt"),
    ([{"name": "tensorrt", "precisions": ["fp32"]}], "Input should be 'fp16' or 'int8'"),
    ([{"name": "openvino"}, {"name": "openvino"}], "each target may appear once"),
])
def test_bad_targets_exit_2(write_config, targets, fragment):
    one_line_error(invoke("build", write_config({"name": "x", "targets": targets})), 2, fragment)


def test_export_before_finetune_says_what_to_run(write_config):
    cfg = write_config(dict(SMALL_ELPV, output_dir="fresh"))
    one_line_error(invoke("export", cfg), 2, "run `edgepipe finetune`")


@pytest.mark.parametrize("data, fragment", [
    ({"name": "x", "model": {"backbone": "vgg19"}}, "unknown backbone 'vgg19'"),
    ({"name": "x", "finetune": {"epochs": "many"}}, "finetune.epochs"),
    ({"name": "x", "dataset": {"source": "imagefolder", "root": "missing"}}, "does not exist or is not a folder"),
])
def test_bad_config_exits_2(write_config, data, fragment):
    one_line_error(invoke("build", write_config(data)), 2, fragment)


def test_missing_config_file_exits_2(tmp_path):
    one_line_error(invoke("build", tmp_path / "absent.yaml"), 2, "does not exist")


def _folder_build(write_config, root, **dataset):
    return write_config({"name": "x", "model": {"image_size": 32},
                         "dataset": {"source": "imagefolder", "root": str(root), **dataset}})


def test_bad_datasets_exit_2(write_config, tmp_path, image_folder):
    for i in range(5):
        write_image(tmp_path / "one" / "cat" / f"{i}.png", seed=i)
    one_line_error(invoke("build", _folder_build(write_config, tmp_path / "one")), 2, "single class")

    (tmp_path / "void").mkdir()
    one_line_error(invoke("build", _folder_build(write_config, tmp_path / "void")), 2, "no class sub-folders")

    (image_folder / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    one_line_error(invoke("build", _folder_build(write_config, image_folder)), 2, "bad.png")

    (image_folder / "dog" / "bad.png").unlink()
    write_image(image_folder / "dog" / "wide.png", size=(96, 48))
    one_line_error(invoke("build", _folder_build(write_config, image_folder)), 2, "images differ in size")


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("build", tmp_path / "absent.yaml", "--debug")
    assert result.exit_code != 0 and result.exc_info is not None
