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
TRUST = click.option("--trust", "trust", multiple=True, type=click.Path(dir_okay=False, path_type=Path), metavar="PUBKEY",
                     help="run BUNDLE only if it is signed by this Ed25519 public key (PEM); repeat the option "
                          "to trust several keys (key rotation)")


def _warn_if_gates_failed(bundle) -> None:
    from edgepipe.core.console import console

    gates = bundle.meta.get("gates") or {}
    if gates.get("passed") is False:
        console.print(f"[bold yellow]warning: {bundle.name} failed its build gates: {'; '.join(gates['failed'])}")
    if bundle.verified.get("how") == "none":
        console.print(f"[bold yellow]warning: {bundle.name}: {bundle.verified.get('note')}")


def expand_inputs(inputs: tuple[str, ...]) -> Iterator[Path]:
    """Files as given (a missing one is still yielded: it gets an error line); folders -> their images, sorted.

    A folder named like an image (x.png) was given as a file: it is yielded as it is, and gets an error line."""
    from edgepipe.core.preprocess import IMAGE_SUFFIXES

    for item in map(Path, inputs):
        if item.is_dir() and item.suffix.lower() not in IMAGE_SUFFIXES:
            yield from sorted(f for f in item.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield item


# Leading bytes of the image formats PIL reads here: an existing file that starts with one is an
# image whatever its name, and --jsonl must not overwrite it.
IMAGE_SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a"),
                    "TIFF": (b"II*\x00", b"MM\x00*"), "BMP": (b"BM",), "WebP": (b"RIFF",)}


def image_signature(head: bytes) -> str | None:
    """The image format whose signature `head` (a file's first bytes) starts with, else None."""
    for fmt, magics in IMAGE_SIGNATURES.items():
        if head.startswith(magics):
            if fmt == "WebP" and head[8:12] != b"WEBP":  # RIFF also holds WAV, AVI
                continue
            # BMP's "BM" is short: also require a known DIB header size at offset 14
            if fmt == "BMP" and int.from_bytes(head[14:18], "little") not in (12, 40, 52, 56, 64, 108, 124):
                continue
            return fmt
    return None


def refuse_output_over_input(jsonl: Path, given: tuple[str, ...], paths: list[Path]) -> None:
    """EdgepipeError when writing --jsonl (it is truncated) would destroy an input or an image:
    the output is one of the inputs (as given, found in an input folder, or the same file through
    a link), or an existing file with an image suffix or an image signature. Reads at most 32
    bytes of a regular file; never opens anything else (opening a FIFO blocks)."""
    import stat

    from edgepipe.core.errors import EdgepipeError
    from edgepipe.core.preprocess import IMAGE_SUFFIXES

    fix = "give --jsonl a new file name (e.g. predictions.jsonl): that file is overwritten"

    def resolved(p: Path) -> Path:
        try:
            return p.resolve()
        except (OSError, RuntimeError):  # a symlink loop: compare as given
            return p.absolute()

    try:
        st = os.stat(jsonl)
    except OSError:
        st = None
    target = resolved(jsonl)
    for p in [*map(Path, given), *paths]:
        same = resolved(p) == target
        if not same and st is not None:
            try:
                other = os.stat(p)
                same = (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
            except OSError:
                pass
        if same:
            raise EdgepipeError(f"--jsonl {jsonl} is one of the input images ({p}): writing the lines would "
                                "overwrite it", fix)
    if st is None or not stat.S_ISREG(st.st_mode):
        return  # a new file, or a device / FIFO (/dev/null, a pipe): nothing to lose
    suffix = next((s for s in (jsonl.suffix.lower(), target.suffix.lower()) if s in IMAGE_SUFFIXES), None)
    if suffix:
        raise EdgepipeError(f"--jsonl {jsonl} is an existing {suffix} image file: writing the lines would "
                            "overwrite it", fix)
    try:
        with open(jsonl, "rb") as f:
            fmt = image_signature(f.read(32))
    except OSError:
        fmt = None  # unreadable: opening it for writing says why
    if fmt:
        raise EdgepipeError(f"--jsonl {jsonl} is an existing file that holds a {fmt} image: writing the lines "
                            "would overwrite it", fix)
    refuse_foreign_output(jsonl, "--jsonl", "JSON lines", (b"{",), devices_ok=True)


def refuse_foreign_output(path: Path, option: str, what: str, starts: tuple[bytes, ...], devices_ok: bool) -> None:
    """EdgepipeError unless an existing `path` is empty or holds what `option` writes (its first bytes
    start with one of `starts`): an output option must never destroy a config, a key or a model
    that a typo pointed it at. devices_ok: /dev/null or a pipe is a fine target (a stream); else
    refused too, since the file is replaced by rename and the node would be lost."""
    import stat

    from edgepipe.core.errors import EdgepipeError

    try:
        st = os.stat(path)
    except OSError:
        return  # nothing there (or unreachable: writing says why)
    if not stat.S_ISREG(st.st_mode):
        if devices_ok and not stat.S_ISDIR(st.st_mode):
            return
        raise EdgepipeError(f"{option} {path} is not a regular file (a folder, device or pipe): it would be replaced",
                            f"give {option} the path of a file")
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return
    if head and not head.startswith(starts):
        raise EdgepipeError(f"{option} {path} is an existing file that does not hold {what} "
                            f"(it starts with {head[:12]!r}): writing would overwrite it",
                            f"give {option} a new file name, or delete that file first if it is yours to lose")


class LineSink:
    """One JSON object per line. To a file: each line is one write() then fsync, so after a power
    loss or kill the file holds only whole lines; to stdout: flushed per line.

    An output that cannot be opened or written (missing folder, a path under a file, read-only,
    disk full) is an EdgepipeError naming the path and the cause, not a traceback."""

    def __init__(self, path: Path | None):
        import stat

        from edgepipe.core.errors import EdgepipeError

        self.path, self.lines, self.fd = path, 0, None
        if path is None:
            return
        try:
            # not truncated yet: a bundle refused after this must not cost the previous lines (begin())
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            if isinstance(e, FileNotFoundError):
                fix = f"create the folder first (mkdir -p {path.parent}) or choose another --jsonl path"
            elif isinstance(e, NotADirectoryError):
                fix = f"a part of {path.parent} is a file, not a folder: choose another --jsonl path"
            else:
                fix = "choose a --jsonl path this user can write"
            raise EdgepipeError(f"cannot write --jsonl {path}: {why}", fix) from None
        self.sync = stat.S_ISREG(os.fstat(self.fd).st_mode)  # fsync fails (EINVAL) on /dev/null, pipes

    def begin(self) -> None:
        """Empty the file: called once the model is loaded and lines are about to come."""
        if self.fd is not None and self.sync:  # a regular file (devices and pipes cannot be truncated)
            os.ftruncate(self.fd, 0)

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            if self.fd is None:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                data = line.encode()
                while data:  # os.write may write less than asked (rare for regular files, but allowed)
                    data = data[os.write(self.fd, data):]
                if self.sync:
                    os.fsync(self.fd)
        except OSError as e:
            from edgepipe.core.errors import EdgepipeError

            where = f"--jsonl {self.path}" if self.fd is not None else "standard output"
            raise EdgepipeError(f"writing {where} failed: {(e.strerror or str(e)).lower()}, after {self.lines} "
                                "line(s)", "free space or choose another output; the lines written so far are "
                                "complete") from None
        self.lines += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _predict(bundle: Path, images: tuple[str, ...], jsonl: Path | None, threads: int | None, batch: int,
             proxy: bool, trust: tuple[Path, ...] = ()) -> None:
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
    ok = failed = 0
    checked = load_bundle(bundle, trusted_keys=trust or None)  # files, digest and (with --trust) signature
    sink = LineSink(jsonl)
    try:
        with Predictor(checked, threads=threads, batch_size=batch, proxy=proxy) as p:
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
    if not ok:
        raise EdgepipeError(f"none of the {failed} image(s) could be read", "see the error lines")


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
    @THREADS
    @PROXY
    @TRUST
    @guard
    def predict(bundle: Path, images: tuple[str, ...], jsonl: Path | None, batch: int, threads: int | None,
                proxy: bool, trust: tuple[Path, ...]) -> None:
        """Predict IMAGES (files or folders) with BUNDLE: one JSON line per image, written as it goes.

        Unreadable images get an {"path", "error"} line and the run continues."""
        _predict(bundle, images, jsonl, threads, batch, proxy, trust)

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
