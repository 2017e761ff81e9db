"""A tiny build as the stages leave it (export, quantize, verify, report in the manifest), bundled by
the real bundle stage, plus its test images as a labelled folder of PNG files.

Verify rows are measured with the real runners on the tiny net's test images, so a bundle's
recorded accuracy is what `check` must reproduce from the PNG files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgepipe.calibration import load_calibration_set
from edgepipe.core.files import write_json
from edgepipe.core.metrics import machine_info
from edgepipe.pipeline.config import BuildConfig, VerifyConfig
from edgepipe.pipeline.data import PreparedData, Split
from edgepipe.pipeline.manifest import Manifest
from edgepipe.pipeline.report import run_report
from edgepipe.pipeline.verify import REFERENCE, _row, measure
from edgepipe.targets import get_target
from edgepipe.targets.base import Artifact
from tests.conftest import TINY_SPEC, _images

CLASSES = ("left", "right")
TARGETS = [{"name": "onnxruntime", "precisions": ["fp32", "int8"]}, {"name": "openvino", "precisions": ["fp32", "int8"]},
           {"name": "tensorrt", "precisions": ["fp16", "int8"]}]


def _build_artifacts(cfg: BuildConfig, onnx: Path, calib) -> list[Artifact]:
    out, artifacts = cfg.output_dir / "targets", []
    for t in cfg.targets:
        for precision in t.precisions:
            if (t.name, precision) == ("openvino", "int8"):  # stands for a target that failed to build
                artifacts.append(Artifact(t.name, precision, out / "openvino-int8", status="failed", reason="boom"))
                continue
            artifacts += get_target(t.name).build(onnx, precision, calib, out / f"{t.name}-{precision}", t)
    return artifacts


def _verify(cfg: BuildConfig, artifacts: list[Artifact], rgb8: np.ndarray, labels: np.ndarray, reference) -> dict:
    """What run_verify records, with the tiny torch model's logits as the reference row."""
    vcfg, ref_acc = cfg.verify, float((reference.argmax(1) == labels).mean())
    ref = {"logits": reference, "runtime": None, "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0, "mean": 1.0, "runs": 5},
           "throughput": {"batch": 8, "images_per_s": 1.0}}
    rows = [{"name": REFERENCE, "target": "torch", "precision": "fp32", "status": "ok", "reason": None, "proxy": None,
             "details": {}, "size_bytes": 1, **_row(ref, labels, CLASSES, reference, REFERENCE, reference, ref_acc)}]
    logits = {REFERENCE: reference}
    for a in artifacts:
        row = {"name": a.name, "target": a.target, "precision": a.precision, "status": a.status, "reason": a.reason,
               "proxy": a.proxy, "details": a.details, "size_bytes": a.size_bytes()}
        if a.status == "built":
            m = measure(get_target(a.target).load(a, vcfg.threads), rgb8, TINY_SPEC, vcfg)
            parent = a.parent if a.parent in logits else REFERENCE
            logits[a.name] = m["logits"]
            row |= {"status": "ok", **_row(m, labels, CLASSES, reference, parent, logits[parent], ref_acc)}
        rows.append(row)
    return {"schema": "edgepipe-verify/1", "test_images": len(labels), "classes": list(CLASSES), "reference": REFERENCE,
            "machine": machine_info(vcfg.threads), "method": {"warmup": vcfg.warmup, "runs": vcfg.runs, "batch_latency": 1,
            "throughput_batch": vcfg.throughput_batch, "timing": "wall clock around runner.infer"}, "rows": rows}


def _tiny_data(rgb8: np.ndarray, labels: np.ndarray) -> PreparedData:
    """The dataset the reference stage reads: the 64 test images, half of them as val."""
    n = len(labels)
    split = Split(train=np.arange(n), val=np.arange(n // 2), test=np.arange(n // 2, n))
    return PreparedData(CLASSES, [], rgb8, labels, split, TINY_SPEC, "0" * 64, "1" * 64)


def tiny_data() -> PreparedData:
    """The tiny build's dataset, for a test that runs the bundle stage again."""
    return _tiny_data(*_images(64, seed=2))


def make_tiny_build(tiny: dict, root: Path) -> tuple[BuildConfig, Manifest]:
    from edgepipe.pipeline.bundle import run_bundle
    from edgepipe.pipeline.drift_reference import run_reference

    cfg = BuildConfig(name="tiny", output_dir=root / "build", model={"image_size": 32}, targets=TARGETS,
                      verify=VerifyConfig(threads=1, warmup=1, runs=5, throughput_batch=8),
                      bundle={"dist_dir": root / "dist"})
    manifest = Manifest.open(cfg)
    manifest.record_dataset({"classes": list(CLASSES), "sha256": "0" * 64, "split_sha256": "1" * 64,
                             "preprocess": TINY_SPEC.to_dict()})
    onnx = cfg.output_dir / "export" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    shutil.copyfile(tiny["onnx"], onnx)
    manifest.record_stage("export", {"onnx": onnx}, {})
    calib_path = cfg.output_dir / "calibration" / "calibration.npz"
    calib_path.parent.mkdir(parents=True)
    shutil.copyfile(tiny["calib"].path, calib_path)
    calib = load_calibration_set(calib_path)
    artifacts = _build_artifacts(cfg, onnx, calib)
    outputs = {"calibration": calib_path} | {f"{a.name}/{f.name}": f for a in artifacts for f in a.files}
    manifest.record_stage("quantize", outputs, {"calibration_sha256": calib.sha256},
                          artifacts=[a.to_dict(cfg.output_dir) for a in artifacts])
    rgb8, labels = _images(64, seed=2)  # the images behind tiny["x"] and tiny["reference"]
    results = _verify(cfg, artifacts, rgb8, labels, tiny["reference"])
    manifest.record_stage("verify", {"results": write_json(cfg.output_dir / "verify" / "results.json", results)}, {})
    run_report(cfg, results, manifest)
    run_reference(cfg, tiny_data(), manifest)
    run_bundle(cfg, manifest)
    for i, (img, y) in enumerate(zip(rgb8, labels)):
        path = root / "test-images" / CLASSES[y] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    return cfg, manifest


@pytest.fixture(scope="session")
def tiny_build(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("tinybuild")
    cfg, manifest = make_tiny_build(tiny, root)
    return {"cfg": cfg, "manifest": manifest, "dist": root / "dist" / "tiny", "images": root / "test-images", "root": root}


@pytest.fixture
def bundle_copy(tiny_build, tmp_path):
    """A private copy of a bundle, free to tamper with."""

    def _copy(name: str = "onnxruntime-fp32") -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_build["dist"] / name, dst)
        return dst

    return _copy
