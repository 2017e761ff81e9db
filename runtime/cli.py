"""Field-unit commands: predict, bench, check, engine. They load a bundle, never a build config,
and import their backend only when they run, so `edgepipe --help` works on a bare device."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

BUNDLE = click.argument("bundle", type=click.Path(path_type=Path))
THREADS = click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: the build's verify setting)")
PROXY = click.option("--proxy", is_flag=True,
                     help="TensorRT int8 bundle: run its Q/DQ graph on ONNX Runtime, as the build verified it")


def _warn_if_gates_failed(bundle) -> None:
    from pipeline.console import console

    gates = bundle.meta.get("gates") or {}
    if gates.get("passed") is False:
        console.print(f"[bold yellow]warning: {bundle.name} failed its build gates: {'; '.join(gates['failed'])}")
    if bundle.verified.get("how") == "none":
        console.print(f"[bold yellow]warning: {bundle.name}: {bundle.verified.get('note')}")


def expand_inputs(inputs: tuple[str, ...]) -> Iterator[Path]:
    """Files as given (a missing one is still yielded: it gets an error line); folders -> their images, sorted."""
    from pipeline.preprocess import IMAGE_SUFFIXES

    for item in map(Path, inputs):
        if item.is_dir():
            yield from sorted(f for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield item


class LineSink:
    """One JSON object per line. To a file: each line is one write() then fsync, so after a power
    loss or kill the file holds only whole lines; to stdout: flushed per line."""

    def __init__(self, path: Path | None):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if path is not None else None

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self.fd is None:
            sys.stdout.write(line)
            sys.stdout.flush()
            return
        data = line.encode()
        while data:  # os.write may write less than asked (rare for regular files, but allowed)
            data = data[os.write(self.fd, data):]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _predict(bundle: Path, images: tuple[str, ...], jsonl: Path | None, threads: int | None, batch: int,
             proxy: bool) -> None:
    import numpy as np

    from pipeline.console import console
    from pipeline.errors import EdgepipeError, ImageError
    from runtime.predictor import Predictor

    paths = list(expand_inputs(images))
    if not paths:
        raise EdgepipeError(f"no images in {', '.join(images)}", "pass image files or folders holding .png / .jpg images")
    ok = failed = 0
    sink = LineSink(jsonl)
    try:
        with Predictor(bundle, threads=threads, batch_size=batch, proxy=proxy) as p:
            _warn_if_gates_failed(p.bundle)
            for i in range(0, len(paths), p.batch_size):
                pixels, sources = [], []
                for path in paths[i:i + p.batch_size]:
                    try:
                        pixels.append(p.load(path))
                        sources.append(str(path))
                    except ImageError as e:  # one bad file must not stop a field unit's run
                        sink.write({"path": str(path), "error": e.problem})
                        failed += 1
                for pred in p.predict_pixels(np.stack(pixels), sources) if pixels else []:
                    sink.write(pred.to_dict())
                    ok += 1
    finally:
        sink.close()
    console.print(f"{ok} image(s) predicted, {failed} unreadable" + (f"; lines in {jsonl}" if jsonl else ""))
    if not ok:
        raise EdgepipeError(f"none of the {failed} image(s) could be read", "see the error lines")


def _print_bench(r: dict) -> None:
    from rich.table import Table

    from pipeline.console import console

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


def add_runtime_commands(cli: click.Group, guard: Callable) -> None:
    @cli.command()
    @BUNDLE
    @click.argument("images", nargs=-1, required=True)
    @click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path),
                  help="write the JSON lines to this file (fsynced per line) instead of stdout")
    @click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="images per inference")
    @THREADS
    @PROXY
    @guard
    def predict(bundle: Path, images: tuple[str, ...], jsonl: Path | None, batch: int, threads: int | None,
                proxy: bool) -> None:
        """Predict IMAGES (files or folders) with BUNDLE: one JSON line per image, written as it goes.

        Unreadable images get an {"path", "error"} line and the run continues."""
        _predict(bundle, images, jsonl, threads, batch, proxy)

    @cli.command()
    @BUNDLE
    @THREADS
    @click.option("--runs", type=click.IntRange(min=5), help="timed batch-1 runs (default: the build's)")
    @click.option("--warmup", type=click.IntRange(min=0), help="untimed runs first (default: the build's)")
    @click.option("--image", type=click.Path(dir_okay=False, path_type=Path), help="time this image (default: random pixels)")
    @click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
    @PROXY
    @guard
    def bench(bundle: Path, threads: int | None, runs: int | None, warmup: int | None, image: Path | None,
              as_json: bool, proxy: bool) -> None:
        """Latency of BUNDLE on this device (p50/p95/p99, throughput), measured as the build's verify stage did."""
        from runtime.evaluate import bench as run_bench
        from runtime.predictor import Predictor

        with Predictor(bundle, threads=threads, proxy=proxy) as p:
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
    @guard
    def check(bundle: Path, folder: Path, threads: int | None, min_accuracy: float | None, as_json: bool,
              proxy: bool) -> None:
        """Accuracy of BUNDLE on FOLDER/<label>/*.png (labelled images on the device), next to the build's."""
        from pipeline.console import console, progress
        from pipeline.errors import CheckFailed
        from runtime.bundle import load_bundle
        from runtime.evaluate import check as run_check
        from runtime.evaluate import labelled_images
        from runtime.predictor import Predictor

        b = load_bundle(bundle)
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
        recall = ", ".join(f"{c} {r:.2%}" for c, r in result["per_class_recall"].items())
        console.print(f"{result['bundle']}: accuracy {result['accuracy']:.2%} on {result['images']} images "
                      f"(recall {recall}); confusion {result['confusion']}")
        if build["accuracy"] is not None:
            console.print(f"build report: {build['accuracy']:.2%} on {build['test_images']} test images "
                          f"({build['how']}); difference {100 * (result['accuracy'] - build['accuracy']):+.2f} pt")
        if min_accuracy is not None and result["accuracy"] < min_accuracy:
            raise CheckFailed(f"accuracy {result['accuracy']:.2%} is below --min-accuracy {min_accuracy:.2%}",
                              "look for a preprocessing or labelling mismatch before blaming quantization")

    @cli.command()
    @BUNDLE
    @click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True)
    @click.option("--workspace-mb", type=click.IntRange(min=64), default=1024, show_default=True)
    @click.option("--dla-core", type=click.IntRange(min=0), help="build for this DLA core (GPU fallback on)")
    @guard
    def engine(bundle: Path, max_batch: int, workspace_mb: int, dla_core: int | None) -> None:
        """Build the TensorRT engine of a TensorRT BUNDLE on this device (exit 4 where TensorRT is missing)."""
        from pipeline.console import console
        from runtime.engine import build_bundle_engine

        info = build_bundle_engine(bundle, max_batch=max_batch, workspace_mb=workspace_mb, dla_core=dla_core)
        console.print(f"wrote {bundle / 'model.plan'} (TensorRT {info['tensorrt']}, from {info['onnx']})")
