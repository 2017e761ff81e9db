"""Quantize / compile stage: draw the calibration set, then build every (target, precision).

A target that fails to build is reported as failed with its reason and fails the build's
gates; the other targets still build. A target whose backend is missing here is skipped, with
the reason, never silently.
"""

from __future__ import annotations

import time
import traceback

from edgepipe.calibration import create_calibration_set
from edgepipe.core.console import console
from edgepipe.core.files import write_json
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.fallback import (
    RANK_IMAGES,
    FallbackPolicy,
    ValidationSet,
    build_with_fallback,
    rank_layers,
)
from edgepipe.pipeline.manifest import Manifest
from edgepipe.pipeline.weight_rounding import round_weights
from edgepipe.targets import get_target
from edgepipe.targets.base import Artifact, BackendUnavailable


def run_quantize(cfg: BuildConfig, data: PreparedData, manifest: Manifest) -> list[Artifact]:
    t0 = time.perf_counter()
    onnx_path = manifest.output("export", "onnx")
    calib = create_calibration_set(data.images, data.labels, data.split.train, cfg.calibration.size, cfg.seed,
                                   data.spec, cfg.output_dir / "calibration" / "calibration.npz")
    console.print(f"calibration set: {len(calib)} train images, sha256 {calib.sha256[:12]}")
    fb = cfg.fallback
    policy = FallbackPolicy(fb.target_agreement, fb.max_accuracy_drop, fb.max_float_layers)
    has_int8 = any("int8" in t.precisions for t in cfg.targets)
    wants_int8 = fb.enabled and has_int8
    int8_source, rounding = onnx_path, None
    if has_int8 and cfg.calibration.weight_rounding == "data_aware":
        # Every int8 build (and the sensitivity ranking) starts from weights already on their grid.
        int8_source = cfg.output_dir / "calibration" / "model_int8_weights.onnx"
        console.print(f"rounding int8 weights on {min(cfg.calibration.rounding_images, len(calib))} calibration images ...")
        rounding = round_weights(onnx_path, int8_source, calib, cfg.calibration.rounding_images, cfg.verify.threads)
        console.print(f"  {rounding['layers']} layers, layer output error vs nearest rounding: "
                      f"median x{rounding['median_error_ratio']:.2f} ({rounding['seconds']} s)")
    val = ranking = None
    if wants_int8:
        from edgepipe.pipeline.export import ort_logits

        x_val, y_val = data.subset("val")
        x_val = data.spec.normalize(x_val)
        val = ValidationSet(x_val, y_val, ort_logits(onnx_path, x_val))
        console.print(f"ranking layer sensitivity on {min(RANK_IMAGES, len(y_val))} validation images ...")
        ranking = rank_layers(int8_source, calib, val, cfg.verify.threads)
        write_json(cfg.output_dir / "calibration" / "layer_sensitivity.json", ranking)
    artifacts: list[Artifact] = []
    for tcfg in cfg.targets:
        target = get_target(tcfg.name)
        for precision in tcfg.precisions:
            out_dir = cfg.output_dir / "targets" / f"{tcfg.name}-{precision}"
            started = time.perf_counter()
            source = int8_source if precision == "int8" else onnx_path
            try:
                if precision == "int8" and wants_int8:
                    built = build_with_fallback(
                        lambda keep: target.build(source, precision, calib, out_dir, tcfg, keep),
                        lambda a: target.load(a, cfg.verify.threads), val, ranking, policy, f"{tcfg.name}-int8")
                else:
                    built = target.build(source, precision, calib, out_dir, tcfg)
            except BackendUnavailable as e:
                built = [Artifact(tcfg.name, precision, out_dir, status="skipped", reason=str(e))]
            except Exception as e:  # one target's failure must not hide the others' results
                reason = f"{type(e).__name__}: {e}".splitlines()[0]
                console.print(f"[bold red]{tcfg.name} {precision} failed to build: {reason}")
                console.print(traceback.format_exc(limit=3), markup=False, highlight=False)
                built = [Artifact(tcfg.name, precision, out_dir, status="failed", reason=reason)]
            for a in built:
                a.details.setdefault("build_s", round(time.perf_counter() - started, 1))
                if precision == "int8" and a.status == "built":
                    a.details["weight_rounding"] = cfg.calibration.weight_rounding
                note = {"built": "[green]built", "skipped": "[yellow]skipped", "failed": "[red]FAILED"}[a.status]
                console.print(f"  {a.name:<28} {note}[/] {a.reason or ''}")
            artifacts += built

    outputs = {"calibration": calib.path}
    if rounding is not None:
        outputs["int8_weights"] = int8_source
        write_json(cfg.output_dir / "calibration" / "weight_rounding.json", rounding)
        outputs["weight_rounding"] = cfg.output_dir / "calibration" / "weight_rounding.json"
    if ranking is not None:
        outputs["layer_sensitivity"] = cfg.output_dir / "calibration" / "layer_sensitivity.json"
    for a in artifacts:
        for f in a.files:
            outputs[f"{a.name}/{f.name}"] = f
    info = {"calibration_images": len(calib), "calibration_sha256": calib.sha256}
    if rounding is not None:
        info["weight_rounding"] = {k: v for k, v in rounding.items() if k != "per_layer"}
    manifest.record_stage("quantize", outputs, info,
                          artifacts=[a.to_dict(cfg.output_dir) for a in artifacts],
                          wall_s=round(time.perf_counter() - t0, 1))
    return artifacts


def recorded_artifacts(manifest: Manifest) -> list[Artifact]:
    """The artifacts the quantize stage recorded, with their files checked against the manifest."""
    manifest.output("quantize", "calibration")  # raises with a fix if the stage has not run
    stage = manifest.data["stages"]["quantize"]
    for key in stage["outputs"]:
        manifest.output("quantize", key)
    return [Artifact.from_dict(d, manifest.out_dir) for d in stage["artifacts"]]
