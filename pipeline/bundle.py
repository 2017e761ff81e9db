"""Bundle stage: one self-contained deploy folder per artifact, carrying the numbers the build verified.

Runs after `report`. For each artifact: <dist_dir>/<name>/<target>-<precision>/ with the model
file(s) and bundle.json (schema in runtime/bundle.py), and <name>-<target>-<precision>.tar.gz
(+ .sha256) beside it, the release asset. A field unit loads it with `edgepipe.Predictor` or
`edgepipe predict`, which need no torch.

Artifacts that failed to build or to run in verify get no bundle (the console says why). What a
bundle holds, its model format and runtime are its backend's (targets/<backend>/: Target.bundle_files,
Device.runtime_requirement). A backend whose bundles are built on the device (TensorRT) gets its
bundle even where it is missing here; bundle.json says whether its accuracy was verified through a
proxy or not at all.
Each folder and archive appears under its final name only when complete (temp + rename), and
dist/<name>/ holds only this build's bundles: a stale one from an earlier build is removed.
Each bundle also holds reference.json, its drift reference (the reference stage's output, see
pipeline/drift_reference.py: the val and test images' statistics and the artifact's own confidences
on them), listed and hashed in bundle.json like the model, so the integrity check and the signature
cover it; `edgepipe monitor` reads it.
With a signing key (`--sign KEY`, an Ed25519 PEM private key) each bundle also gets bundle.sig
(runtime/signing.py), written before the rename and so inside the archive too; the key is
checked before any bundle is written, so a bad key leaves the previous bundles as they were.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

from edgepipe.core import __version__
from edgepipe.core.console import console
from edgepipe.core.errors import MissingArtifactError
from edgepipe.core.files import TMP_MARK, atomic_output, sha256_file
from edgepipe.pipeline.config import BuildConfig
from edgepipe.pipeline.manifest import Manifest
from edgepipe.pipeline.ownership import written_by_edgepipe
from edgepipe.pipeline.quantize import recorded_artifacts
from edgepipe.pipeline.records import read_report, read_results
from edgepipe.runtime.bundle import (
    MANIFEST,
    SCHEMA,
    SIGNATURE,
    canonical_meta,
    file_entry,
    seal,
    validate_meta,
)
from edgepipe.runtime.reference import REFERENCE_FILE
from edgepipe.targets import get_target
from edgepipe.targets.base import Artifact
from edgepipe.targets.builder import Target

ROW_KEYS = ("accuracy", "macro_f1", "per_class_recall", "confusion", "accuracy_delta", "agreement", "vs_parent",
            "latency_ms", "throughput", "runtime")


def _no_bundle_reason(a: Artifact, target: Target, row: dict | None) -> str | None:
    if a.status == "failed":
        return f"failed to build: {a.reason}"
    if a.status == "skipped" and not (target.bundles_unbuilt and a.files):
        return f"not built: {a.reason}"
    if a.status == "built" and (row is None or row["status"] != "ok"):
        return f"failed verify: {row['reason'] if row else 'no verify result'}"
    return None


def _verified(a: Artifact, rows: dict, results: dict, report: dict) -> tuple[dict, dict]:
    """(verified, gates) for bundle.json: the report row measured for this artifact, or its proxy."""
    row, how = rows.get(a.name), "measured"
    if a.status == "skipped":  # TensorRT without TensorRT: its Q/DQ graph may have a proxy row
        row, how = rows.get(f"{a.name}-proxy"), "proxy"
        if row is None or row["status"] != "ok":
            return ({"how": "none", "note": f"not verified: {a.reason} on the build machine; "
                     "run `edgepipe check` with labelled images on the device"}, {"passed": None, "failed": []})
    ref = rows[report["reference"]]
    verified = {"how": how, "note": row.get("proxy"), "row": row["name"], "test_images": results["test_images"],
                "reference": ref["name"], "reference_accuracy": ref["accuracy"], **{k: row.get(k) for k in ROW_KEYS},
                "machine": results["machine"], "method": {**results["method"], "threads": results["machine"]["threads"]}}
    failed = [g["reason"] for g in report["gates"] if g["artifact"] == row["name"] and g["status"] == "failed"]
    return verified, {"passed": not failed, "failed": failed}


def bundle_meta(cfg: BuildConfig, manifest: Manifest, report: dict, results: dict, a: Artifact, target: Target,
                rows: dict, model: Path) -> dict:
    dataset = manifest.data.get("dataset") or {}
    if "preprocess" not in dataset:
        raise MissingArtifactError(f"{manifest.path} records no preprocessing spec", "rerun `edgepipe build`")
    device = target.device
    inp, out = target.io_spec(model)
    verified, gates = _verified(a, rows, results, report)
    stages = manifest.data["stages"]
    return {
        "schema": SCHEMA, "name": cfg.name, "artifact": f"{a.target}-{a.precision}", "target": a.target,
        "precision": a.precision, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": list(results["classes"]), "preprocess": dataset["preprocess"], "input": inp, "output": out,
        # details minus the build machine's own paths
        "model": {"path": model.name, "format": target.model_format,
                  "details": {k: v for k, v in a.details.items() if k != "bundle"}},
        "runtime": device.runtime_requirement(manifest.data.get("tool_versions", {})),
        "verified": verified, "gates": gates,
        "build": {"edgepipe": __version__, "config_sha256": report["config_sha256"], "report_created": report["created"],
                  "report_sha256": stages["report"]["outputs"]["report_json"]["sha256"],
                  "onnx_sha256": stages["export"]["outputs"]["onnx"]["sha256"],
                  "calibration_sha256": stages["quantize"]["metrics"].get("calibration_sha256"),
                  "dataset_sha256": dataset.get("sha256"), "split_sha256": dataset.get("split_sha256")},
        "tool_versions": manifest.data.get("tool_versions", {}),
        "device_files": list(device.device_files),
    }


def _replace_dir(tmp: Path, final: Path) -> None:
    """Put tmp under final's name; the old folder moves aside first, so final is never half-written."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_bundle(final: Path, files: list[Path], meta: dict, sign_key=None,
                 generated: dict[str, bytes] | None = None) -> Path:
    """Copy files (and write `generated`: name -> content) into a temp folder, hash them all into
    bundle.json (sealed with the digest of its own content), sign it when sign_key (an
    Ed25519PrivateKey) is given, then rename into place."""
    tmp = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in files:
            shutil.copy2(f, tmp / f.name)  # copy2 keeps build_engine.sh executable
        for name, content in (generated or {}).items():
            if (tmp / name).exists():
                raise ValueError(f"bundle file {name} would be written twice")
            (tmp / name).write_bytes(content)
        names = sorted({f.name for f in files} | set(generated or {}))
        # through JSON first: the digest must be of what the device will parse (no int keys, no tuples)
        meta = json.loads(json.dumps({**meta, "files": {name: file_entry(tmp / name) for name in names}}))
        meta = seal(meta)
        validate_meta(meta)  # never write a bundle the device's loader would refuse
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
        if sign_key is not None:
            from edgepipe.runtime.signing import sign

            (tmp / SIGNATURE).write_text(json.dumps(sign(sign_key, canonical_meta(meta)), indent=2) + "\n")
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_archive(folder: Path, path: Path, top: str) -> tuple[Path, str]:
    """A reproducible .tar.gz of the folder (fixed owner and times, sorted) under `top/`, plus
    `.sha256`; returns the archive and its sha256."""
    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    with atomic_output(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, arcname=top, recursive=False, filter=normalize)
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"{top}/{f.name}", filter=normalize)
    digest = sha256_file(path)
    with atomic_output(path.with_name(path.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")
    return path, digest


def _remove_stale(dist: Path, name: str, keep: set[str]) -> list[str]:
    """Bundles and archives of this build name that this run did not write (their artifact is gone or failed)."""
    removed = []
    for p in sorted(dist.iterdir()) if dist.is_dir() else []:
        if written_by_edgepipe(p, name) and p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p.name)
    return removed


def _check_order(manifest: Manifest) -> None:
    """bundle.json must carry the numbers of exactly these artifacts: refuse a report older than them."""
    stages = manifest.data["stages"]
    for earlier, later in (("quantize", "verify"), ("verify", "report")):
        if stages[later]["finished"] < stages[earlier]["finished"]:
            raise MissingArtifactError(f"the {later} results are older than the {earlier} outputs in {manifest.path}",
                                       "rerun `edgepipe verify` (or `edgepipe build`) before bundling")


def _reference(manifest: Manifest, a: Artifact) -> dict[str, bytes]:
    """{"reference.json": content} from the reference stage, or {} for a build without one."""
    if a.name not in manifest.data["stages"].get("reference", {}).get("outputs", {}):
        return {}
    return {REFERENCE_FILE: manifest.output("reference", a.name).read_bytes()}


def run_bundle(cfg: BuildConfig, manifest: Manifest, sign_key: Path | None = None) -> list[Path]:
    t0 = time.perf_counter()
    signing = signer = None
    if sign_key is not None:  # first: a bad key must fail before any bundle is rewritten
        from edgepipe.runtime.signing import key_id, load_private_key

        signing = load_private_key(sign_key)
        signer = key_id(signing.public_key())
        console.print(f"signing bundles with {sign_key} (key id {signer})")
    if not cfg.bundle.enabled:
        console.print("bundles disabled (bundle.enabled: false)")
        return []
    report, results = read_report(manifest), read_results(manifest)
    _check_order(manifest)
    rows = {r["name"]: r for r in report["rows"]}
    dist = cfg.bundle.dist_dir / cfg.name
    written, skipped, keep = [], {}, set()
    for a in recorded_artifacts(manifest):
        if a.proxy:  # its numbers go into the TensorRT bundle it stands in for
            continue
        key = f"{a.target}-{a.precision}"
        target = get_target(a.target)
        if reason := _no_bundle_reason(a, target, rows.get(a.name)):
            skipped[key] = reason
            console.print(f"  {key:<28} [yellow]no bundle[/] {reason}")
            continue
        model, files = target.bundle_files(a)  # the backend's choice (TensorRT never ships a plan)
        meta = bundle_meta(cfg, manifest, report, results, a, target, rows, model)
        # A release key vouches for bundles that passed their gates: a failed one is written unsigned,
        # so a device that trusts only signed bundles never runs it.
        sign_this = signing if meta["gates"]["passed"] is not False else None
        folder = write_bundle(dist / key, files, meta, sign_key=sign_this, generated=_reference(manifest, a))
        keep.add(key)
        entry = {"artifact": key, "path": str(folder), "verified": meta["verified"]["how"],
                 "gates_passed": meta["gates"]["passed"], "signed_by": signer if sign_this is not None else None}
        if cfg.bundle.archive:
            archive, digest = write_archive(folder, dist / f"{cfg.name}-{key}.tar.gz", f"{cfg.name}-{key}")
            keep |= {archive.name, archive.name + ".sha256"}
            entry |= {"archive": str(archive), "archive_sha256": digest}
        written.append(entry)
        note = {"measured": "", "proxy": " (accuracy verified via the ONNX Runtime proxy)",
                "none": f" (accuracy NOT verified: {a.reason})"}[meta["verified"]["how"]]
        gate = "" if meta["gates"]["passed"] is not False else \
            " [red]gates FAILED: do not ship[/]" + (" (left unsigned)" if signing is not None else "")
        signed = f" (signed, key id {signer})" if signer else ""
        console.print(f"  {key:<28} [green]bundle[/] {folder}{signed}{note}{gate}")
    for name in _remove_stale(dist, cfg.name, keep):
        console.print(f"  removed stale {dist / name} (not produced by this build)")
    manifest.record_stage("bundle", {}, {"bundles": len(written), "skipped": skipped},
                          bundles=written, dist_dir=str(dist), wall_s=round(time.perf_counter() - t0, 1))
    return [Path(w["path"]) for w in written]
