"""Field-unit commands: predict, bench, check, monitor, engine. They load a bundle, never a build config,
and import their backend only when they run, so `edgepipe --help` works on a bare device."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from edgepipe.runtime.cli_io import LineSink, expand_inputs, refuse_output_over_input

BUNDLE = click.argument("bundle", type=click.Path(path_type=Path))
THREADS = click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: the build's verify setting)")
PROXY = click.option("--proxy", is_flag=True,
                     help="TensorRT int8 bundle: run its Q/DQ graph on ONNX Runtime, as the build verified it")
TRUST = click.option("--trust", "trust", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PUBKEY",
                     help="run BUNDLE (and each --alternative) only if it is signed by this Ed25519 public key "
                          "(PEM); repeat the option to trust several keys (key rotation)")


def _warn_if_gates_failed(bundle) -> None:
    from edgepipe.core.console import console

    gates = bundle.meta.get("gates") or {}
    if gates.get("passed") is False:
        console.print(f"[bold yellow]warning: {bundle.name} failed its build gates: {'; '.join(gates['failed'])}")
    if bundle.verified.get("how") == "none":
        console.print(f"[bold yellow]warning: {bundle.name}: {bundle.verified.get('note')}")


def _predict(bundle: Path, images: tuple[str, ...], jsonl: Path | None, threads: int | None, batch: int,
             proxy: bool, trust: tuple[Path, ...] = (), telemetry: Path | None = None) -> None:
    import numpy as np

    from edgepipe.core.console import console
    from edgepipe.core.errors import EdgepipeError, ImageError
    from edgepipe.runtime.bundle import load_bundle
    from edgepipe.runtime.predictor import Predictor

    paths = list(expand_inputs(images))
    if not paths:
        raise EdgepipeError(f"no images in {', '.join(images)}", "pass image files or folders holding .png / .jpg images")
    if jsonl is not None:
        refuse_output_over_input(jsonl, images, paths)  # before the bundle loads and the file is truncated
    if telemetry is not None:
        _refuse_telemetry_output(telemetry, jsonl)
    ok = failed = 0
    checked = load_bundle(bundle, trusted_keys=trust or None)  # files, digest and (with --trust) signature
    sink = LineSink(jsonl)
    try:
        with Predictor(checked, threads=threads, batch_size=batch, proxy=proxy, telemetry=telemetry) as p:
            sink.begin()
            _warn_if_gates_failed(p.bundle)
            for i in range(0, len(paths), p.batch_size):
                # A batch's lines are buffered and written in input order; input_index pairs a line with its input.
                chunk = paths[i:i + p.batch_size]
                lines: list[dict] = [{"path": str(path), "input_index": i + j} for j, path in enumerate(chunk)]
                pixels, loaded = [], []
                for j, path in enumerate(chunk):
                    try:
                        pixels.append(p.load(path))
                        loaded.append(j)
                    except ImageError as e:  # one bad file must not stop a field unit's run
                        lines[j]["error"] = e.problem
                        failed += 1
                preds = p.predict_pixels(np.stack(pixels), [str(chunk[j]) for j in loaded]) if pixels else []
                for j, pred in zip(loaded, preds):
                    lines[j] |= pred.to_dict()
                    ok += 1
                for line in lines:
                    sink.write(line)
    finally:
        sink.close()
    console.print(f"{ok} image(s) predicted, {failed} unreadable" + (f"; lines in {jsonl}" if jsonl else ""))
    if telemetry is not None:
        log = p.telemetry
        console.print(f"telemetry: {log.written} record(s) appended to {telemetry}"
                      + (f"; [bold yellow]{log.dropped} dropped: {log.error}" if log.dropped else ""))
    if not ok:
        raise EdgepipeError(f"none of the {failed} image(s) could be read", "see the error lines")


def _refuse_telemetry_output(telemetry: Path, jsonl: Path | None) -> None:
    """--telemetry appends (and rotates) only a telemetry log: never a config, image or key, nor --jsonl."""
    import os

    from edgepipe.core.errors import EdgepipeError
    from edgepipe.runtime.telemetry import refuse_foreign_telemetry

    if jsonl is not None and os.path.realpath(telemetry) == os.path.realpath(jsonl):
        raise EdgepipeError(f"--telemetry {telemetry} is also --jsonl", "give the telemetry log its own file")
    refuse_foreign_telemetry(telemetry, option="--telemetry")


def _print_bench(r: dict) -> None:
    from rich.table import Table

    from edgepipe.core.console import console

    build = r["build"]
    table = Table(title=f"{r['bundle']}: batch-1 latency, {r['machine']['threads']} threads")
    for h in ("", "p50 ms", "p95 ms", "p99 ms", "mean ms", "img/s", "machine"):
        table.add_column(h)

    def row(name, lat, thr, machine):
        if not lat:
            table.add_row(name, "-", "-", "-", "-", "-", "not measured")
            return
        table.add_row(name, *(f"{lat[k]:.2f}" for k in ("p50", "p95", "p99", "mean")),
                      f"{thr['images_per_s']:.0f} (batch {thr['batch']})", f"{machine['cpu']}, {machine['threads']} threads")

    row("this device", r["latency_ms"], r["throughput"], r["machine"])
    row("build (verify)", build.get("latency_ms"), build.get("throughput"), build.get("machine") or {})
    console.print(table)
    console.print(f"runtime: {r['runtime'] or 'default'}; method: {r['method']}")


def _refuse_gate_on_incomplete_data(result: dict, folder: Path) -> None:
    """A gate never passes on bad data: an accuracy over the images that happened to be readable, or
    without one of the classes, says nothing about the model (a dropped class can raise it)."""
    from edgepipe.core.errors import DataError

    absent = [c for c, r in result["per_class_recall"].items() if r is None]
    if absent:
        raise DataError(f"--min-accuracy needs every class: {folder} has no readable image of {', '.join(absent)}",
                        f"add labelled images of each class under {folder}/<label>/, or drop --min-accuracy")
    if result["unreadable"]:
        raise DataError(f"--min-accuracy needs every image: {len(result['unreadable'])} of "
                        f"{len(result['unreadable']) + result['images']} could not be read "
                        f"(first: {result['unreadable'][0]['path']})",
                        "replace or remove the unreadable files (listed above), or drop --min-accuracy")


def add_runtime_commands(cli: click.Group, guard: Callable) -> None:
    @cli.command()
    @BUNDLE
    @click.argument("images", nargs=-1, required=True)
    @click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path),
                  help="write the JSON lines to this file (fsynced per line) instead of stdout")
    @click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="images per inference")
    @click.option("--telemetry", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                  help="append one record per prediction to this log for `edgepipe monitor` (class, confidence, "
                       "image statistics; no path or pixels); rotated at 16 MiB, 3 old files kept")
    @THREADS
    @PROXY
    @TRUST
    @guard
    def predict(bundle: Path, images: tuple[str, ...], jsonl: Path | None, batch: int, telemetry: Path | None,
                threads: int | None, proxy: bool, trust: tuple[Path, ...]) -> None:
        """Predict IMAGES (files or folders) with BUNDLE: one JSON line per image, written as it goes.

        Unreadable images get an {"path", "error"} line and the run continues."""
        _predict(bundle, images, jsonl, threads, batch, proxy, trust, telemetry)

    @cli.command()
    @BUNDLE
    @THREADS
    @click.option("--runs", type=click.IntRange(min=5), help="timed batch-1 runs (default: the build's)")
    @click.option("--warmup", type=click.IntRange(min=0), help="untimed runs first (default: the build's)")
    @click.option("--image", type=click.Path(dir_okay=False, path_type=Path), help="time this image (default: random pixels)")
    @click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
    @PROXY
    @TRUST
    @guard
    def bench(bundle: Path, threads: int | None, runs: int | None, warmup: int | None, image: Path | None,
              as_json: bool, proxy: bool, trust: tuple[Path, ...]) -> None:
        """Latency of BUNDLE on this device (p50/p95/p99, throughput), measured as the build's verify stage did."""
        from edgepipe.runtime.bundle import load_bundle
        from edgepipe.runtime.evaluate import bench as run_bench
        from edgepipe.runtime.predictor import Predictor

        with Predictor(load_bundle(bundle, trusted_keys=trust or None), threads=threads, proxy=proxy) as p:
            _warn_if_gates_failed(p.bundle)
            result = run_bench(p, runs=runs, warmup=warmup, image=image)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            _print_bench(result)

    @cli.command()
    @BUNDLE
    @click.argument("folder", type=click.Path(path_type=Path))
    @THREADS
    @click.option("--min-accuracy", type=click.FloatRange(0, 1), help="exit 3 when the accuracy is below this")
    @click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
    @PROXY
    @TRUST
    @guard
    def check(bundle: Path, folder: Path, threads: int | None, min_accuracy: float | None, as_json: bool,
              proxy: bool, trust: tuple[Path, ...]) -> None:
        """Accuracy of BUNDLE on FOLDER/<label>/*.png (labelled images on the device), next to the build's."""
        from edgepipe.core.console import console, progress
        from edgepipe.core.errors import CheckFailed
        from edgepipe.runtime.bundle import load_bundle
        from edgepipe.runtime.evaluate import check as run_check
        from edgepipe.runtime.evaluate import labelled_images
        from edgepipe.runtime.predictor import Predictor

        b = load_bundle(bundle, trusted_keys=trust or None)
        _warn_if_gates_failed(b)
        # verify scored the test split in batches of throughput_batch: the same batches here
        with Predictor(b, threads=threads, batch_size=b.method("throughput_batch", 32), proxy=proxy) as p, progress() as bar:
            task = bar.add_task("check", total=len(labelled_images(folder, p.labels)), status="")
            result = run_check(p, folder, lambda: bar.advance(task))
        if as_json:
            click.echo(json.dumps(result, indent=2))
        build = result["build"]
        for u in result["unreadable"]:
            console.print(f"[yellow]unreadable: {u['path']}: {u['error']}")
        recall = ", ".join(f"{c} {'n/a' if r is None else f'{r:.2%}'}" for c, r in result["per_class_recall"].items())
        console.print(f"{result['bundle']}: accuracy {result['accuracy']:.2%} on {result['images']} images "
                      f"(recall {recall}); confusion {result['confusion']}")
        if build["accuracy"] is not None:
            console.print(f"build report: {build['accuracy']:.2%} on {build['test_images']} test images "
                          f"({build['how']}); difference {100 * (result['accuracy'] - build['accuracy']):+.2f} pt")
        if min_accuracy is not None:
            _refuse_gate_on_incomplete_data(result, folder)
        if min_accuracy is not None and result["accuracy"] < min_accuracy:
            raise CheckFailed(f"accuracy {result['accuracy']:.2%} is below --min-accuracy {min_accuracy:.2%}",
                              "look for a preprocessing or labelling mismatch before blaming quantization")

    @cli.command()
    @BUNDLE
    @click.argument("telemetry", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--window", type=click.IntRange(min=1), default=200, show_default=True,
                  help="compare the last N predictions (at least 30)")
    @click.option("--json", "as_json", is_flag=True, help="print the report as JSON on stdout")
    @click.option("--alternative", "alternatives", multiple=True, type=click.Path(path_type=Path), metavar="BUNDLE",
                  help="another bundle of the same task (e.g. the --adapt build for a new domain): on drift, "
                       "recommend switching to it when the window's images fit its reference (repeatable)")
    @TRUST
    @guard
    def monitor(bundle: Path, telemetry: Path, window: int, as_json: bool, alternatives: tuple[Path, ...],
                trust: tuple[Path, ...]) -> None:
        """Drift: the last predictions in TELEMETRY (`predict --telemetry`) against BUNDLE's drift reference.

        Prints a table per signal and `ok`, `drift: retrain recommended (signals: ...)` or, with
        --alternative, `drift: switch to BUNDLE, ...` (JSON: switch_to).
        Exit 0: ok, 3: drift, 2: bad input. Runs no model."""
        import sys

        from edgepipe.core.errors import CheckFailed
        from edgepipe.runtime.monitor import run_monitor

        if run_monitor(bundle, telemetry, window, as_json, trust, alternatives).drift:
            sys.exit(CheckFailed.exit_code)

    @cli.command()
    @click.argument("private_path", type=click.Path(dir_okay=False, path_type=Path))
    @guard
    def keygen(private_path: Path) -> None:
        """Create an Ed25519 bundle-signing key: PRIVATE_PATH (PEM, mode 0600) and PRIVATE_PATH.pub.

        Never overwrites a file. Sign in the release pipeline with `edgepipe build --sign
        PRIVATE_PATH` (keep it in the CI secret store); devices get only the .pub file:
        `edgepipe predict --trust PRIVATE_PATH.pub ...`. Prints the key id on stdout."""
        from edgepipe.core.console import console
        from edgepipe.runtime.signing import generate_key_files

        kid = generate_key_files(private_path)
        console.print(f"wrote {private_path} (private key, mode 0600: keep it secret) and {private_path}.pub "
                      f"(public key, for --trust); key id {kid}")
        click.echo(kid)

    @cli.command()
    @BUNDLE
    @click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True)
    @click.option("--workspace-mb", type=click.IntRange(min=64), default=1024, show_default=True)
    @click.option("--dla-core", type=click.IntRange(min=0), help="build for this DLA core (GPU fallback on)")
    @TRUST
    @guard
    def engine(bundle: Path, max_batch: int, workspace_mb: int, dla_core: int | None, trust: tuple[Path, ...]) -> None:
        """Build the TensorRT engine of a TensorRT BUNDLE on this device (exit 4 where TensorRT is missing).

        With --trust the engine is built only from a bundle signed by a trusted key."""
        from edgepipe.core.console import console
        from edgepipe.runtime.engine import build_bundle_engine

        info = build_bundle_engine(bundle, max_batch=max_batch, workspace_mb=workspace_mb, dla_core=dla_core,
                                   trusted_keys=trust or None)
        console.print(f"wrote {bundle / 'model.plan'} (TensorRT {info['tensorrt']}, from {info['onnx']})")
