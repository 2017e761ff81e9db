"""`edgepipe` command line. Stages run one way: config -> finetune -> adapt -> export -> quantize ->
verify -> previous -> explain -> reference -> report -> bundle -> track; `diff` compares two
releases' reports, `update` builds the next release from the previous one.

Exit codes: 0 success, 2 bad input (config, data, missing artifact), 3 a check failed (export
parity or a gate), 1 an internal error (a bug: rerun with --debug and report it).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import click

from edgepipe.core.errors import EdgepipeError, from_os_error


def _guard(fn: Callable) -> Callable:
    """One-line errors with the right exit code; tracebacks only with --debug."""

    @click.option("--debug", is_flag=True, help="show tracebacks")
    @functools.wraps(fn)
    def wrapper(*args, debug: bool, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgepipeError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as e:  # full disk, read-only folder, a file where a folder should be
            if debug or (user := from_os_error(e)) is None:
                raise_as_bug(e, debug)
            click.echo(f"error: {user}", err=True)
            sys.exit(user.exit_code)
        except Exception as e:  # a bug, not a user error
            raise_as_bug(e, debug)

    return wrapper


def raise_as_bug(e: Exception, debug: bool) -> None:
    if debug:
        raise e
    click.echo(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgepipe")
def cli() -> None:
    """Build, quantize, compile and verify compact image classifiers for edge targets."""


CONFIG = click.argument("config", type=click.Path(dir_okay=False))
JUNIT = click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
                     help="also write the gate results as JUnit XML to this file")
BASELINE = click.option("--baseline", type=click.Path(path_type=Path), metavar="PREVIOUS",
                        help="gate every artifact against the previous release's (its report.json or build folder); "
                             "limits from gates.baseline in the config")
SIGN = click.option("--sign", "sign_key", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY",
                    help="sign every bundle with this Ed25519 private key (PEM); see README, Signed bundles")


# Config commands run on the build machine; a field unit installs edgepipe[runtime] without these.
BUILD_MODULES = ("torch", "torchvision", "timm", "onnx", "sklearn")


def _require_build_tools() -> None:
    import importlib.util

    missing = [m for m in BUILD_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgepipeError(f"{', '.join(missing)} not installed: building needs edgepipe's build tools",
                            "pip install 'edgepipe[build]'")


def _run(config: str, stages: tuple[str, ...], junit: Path | None = None, baseline: Path | None = None,
         adapt: Path | None = None, update: Callable | None = None, **options) -> None:
    """adapt: --adapt DIR; update: makes `edgepipe update`'s config from the loaded one."""
    _require_build_tools()
    from edgepipe.pipeline.build import run_stages, run_worker_rank
    from edgepipe.pipeline.config import load_config
    from edgepipe.pipeline.distributed import from_env
    from edgepipe.pipeline.update import resolve_update

    ranks = from_env()
    if ranks.enabled and stages != ("finetune",):
        raise EdgepipeError(f"torchrun started {ranks.world} processes: only the fine-tune runs distributed",
                            "torchrun ... -m edgepipe finetune CONFIG, then `edgepipe build CONFIG` on one process "
                            "continues from its checkpoint")
    cfg = load_config(config)
    if update is not None:
        cfg = update(cfg)
    if adapt is not None:
        from edgepipe.pipeline.config import AdaptConfig, revalidated

        kept = {} if cfg.adapt is None else cfg.adapt.model_dump(exclude={"images"})  # limit, strength
        cfg = revalidated(cfg.model_copy(update={"adapt": AdaptConfig(images=adapt.resolve(), **kept)}), "--adapt")
    if baseline is not None:
        from edgepipe.pipeline.baseline import with_baseline

        cfg = with_baseline(cfg, baseline)
    cfg = resolve_update(cfg)  # an update starts from, and is gated against, the previous release
    if not ranks.main:  # a worker: trains its slice of each batch, writes nothing (rank 0 does)
        run_worker_rank(cfg)
        return
    code = run_stages(cfg, stages, junit, **options)
    if code:
        sys.exit(code)


FORCE = click.option("--force", "force_from", metavar="STAGE",
                     help="rerun STAGE and every stage after it even if up to date (finetune: the whole build)")
ADAPT = click.option("--adapt", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                     help="AdaBN: re-estimate the batch-norm statistics on the unlabelled field images in DIR before "
                          "export and quantization (the config's adapt section)")


@cli.command()
@CONFIG
@JUNIT
@FORCE
@BASELINE
@ADAPT
@SIGN
@_guard
def build(config: str, junit: Path | None, force_from: str | None, baseline: Path | None, adapt: Path | None,
          sign_key: Path | None) -> None:
    """Run every stage of CONFIG that is not up to date; exit 3 if a gate fails.

    A stage is up to date when its inputs (config sections, upstream artifacts, dataset files,
    tool versions) are those of its last complete run and its outputs are intact."""
    _require_build_tools()  # before the build side is imported: a field unit has none of it
    from edgepipe.pipeline.stages import STAGES

    _run(config, STAGES, junit, baseline, adapt, incremental=True, force_from=force_from, sign_key=sign_key)


@cli.command()
@CONFIG
@click.option("--from", "previous", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="PREVIOUS", help="the previous release's build folder (the output_dir its build wrote)")
@click.option("--data", "new_data", required=True, type=click.Path(path_type=Path), metavar="NEW",
              help="the new labelled field images: a folder with one sub-folder per class, or a csv (path,label)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="this release's build folder (default: PREVIOUS-update, never the config's output_dir, "
                   "which holds an earlier release)")
@click.option("--name", help="this release's name (default: <the previous release's name>-update)")
@click.option("--start", type=click.Choice(["previous", "pretrained"]), default=None,
              help="the fine-tune's starting weights: the previous release's model (default, or update.start), or "
                   "the backbone's pretrained ones (a fresh fine-tune on the same data, gated the same way)")
@ADAPT
@JUNIT
@FORCE
@SIGN
@_guard
def update(config: str, previous: Path, new_data: Path, out_dir: Path | None, name: str | None, start: str | None,
           adapt: Path | None, junit: Path | None, force_from: str | None, sign_key: Path | None) -> None:
    """A new release from PREVIOUS: fine-tune from its model (--start pretrained: from the
    backbone's pretrained weights) on CONFIG's dataset plus the labelled field images NEW
    (rehearsal: the old data is trained on again), then every later stage. The report compares it
    with PREVIOUS on both test sets: no regression on the dataset's test images beyond
    gates.baseline.max_accuracy_drop, and at least update.min_field_gain on the field's.
    Exit 2 when PREVIOUS has another backbone, label set or image size (that is a new build, not an
    update), or did not finish."""
    _require_build_tools()
    from edgepipe.pipeline.stages import STAGES
    from edgepipe.pipeline.update import with_update

    _run(config, STAGES, junit, None, adapt, lambda cfg: with_update(cfg, previous, new_data, out_dir, name, start),
         incremental=True, force_from=force_from, sign_key=sign_key)


@cli.command()
@CONFIG
@_guard
def finetune(config: str) -> None:
    """Fine-tune the backbone on the dataset of CONFIG.

    Runs distributed when torchrun starts it (`torchrun --nproc_per_node=N -m edgepipe finetune
    CONFIG`): the same result and checkpoint as one process at the same batch size."""
    _run(config, ("finetune",))


@cli.command()
@CONFIG
@_guard
def export(config: str) -> None:
    """AdaBN when CONFIG has an adapt section, then export the float model to ONNX and check parity with torch."""
    _run(config, ("adapt", "export"))


@cli.command()
@CONFIG
@_guard
def quantize(config: str) -> None:
    """Draw the calibration set and build every target artifact."""
    _run(config, ("quantize",))


@cli.command()
@CONFIG
@JUNIT
@_guard
def verify(config: str, junit: Path | None) -> None:
    """Measure the float model and every artifact on the test split, explain the disagreements, apply the gates."""
    _run(config, ("verify", "previous", "explain", "report"), junit)


@cli.command()
@CONFIG
@_guard
def explain(config: str) -> None:
    """Grad-CAM gallery for report.html: the test images an int8 artifact disagrees on, then the float
    model's errors, each with the float model's heat map (explain/gallery.json, explain/<k>.png)."""
    _run(config, ("explain",))


@cli.command()
@CONFIG
@JUNIT
@BASELINE
@_guard
def report(config: str, junit: Path | None, baseline: Path | None) -> None:
    """Re-apply the gates of CONFIG to the last verify results and rewrite the reports."""
    _run(config, ("report",), junit, baseline)


@cli.command("bundle")
@CONFIG
@SIGN
@_guard
def bundle_(config: str, sign_key: Path | None) -> None:
    """Write a deploy bundle per verified artifact of CONFIG's last build (dist/<name>/<target>-<precision>/)."""
    _run(config, ("bundle",), sign_key=sign_key)


@cli.command()
@CONFIG
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True,
              help="number of stratified folds over train + val")
@_guard
def cv(config: str, folds: int) -> None:
    """K-fold cross-validation of CONFIG's fine-tune: per-fold and mean ± std val accuracy.

    Each fold runs the fine-tune stage with that fold as the validation split (the test split is
    untouched) in OUTPUT_DIR/cv/fold-<k>/; a fold already done is not retrained. Writes
    OUTPUT_DIR/cv/cv.json and cv/report.md."""
    _require_build_tools()
    from edgepipe.pipeline.config import load_config
    from edgepipe.pipeline.cv import run_cv
    from edgepipe.pipeline.distributed import from_env

    if from_env().enabled:
        raise EdgepipeError("edgepipe cv does not run under torchrun",
                            "run it as one process (each fold's fine-tune uses every core)")

    run_cv(load_config(config), folds)


@cli.command()
@click.argument("old", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON instead of markdown")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="also write the comparison as a self-contained HTML page")
@click.option("--common", is_flag=True,
              help="when the test splits differ, compare on the images both hold (default: refuse, exit 2)")
@click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="an artifact whose accuracy drops by more than this (0.01 = 1 pt) is a regression")
@click.option("--max-latency-increase", type=click.FloatRange(0), default=None,
              help="also a regression: p50 latency up by more than this fraction (same CPU only; off by "
                   "default: CPU timings vary ±30 %% between runs)")
@_guard
def diff(old: str, new: str, as_json: bool, html_path: Path | None, common: bool, max_accuracy_drop: float,
         max_latency_increase: float | None) -> None:
    """What changed from release OLD to NEW (each a report.json or its build folder): accuracy,
    agreement, per-class recall, latency and size per artifact, and the test images whose
    prediction changed. Exit 0: no regression ("no change" when nothing changed); 3: an artifact
    regressed (named); 2: the two cannot be compared (different test splits without --common)."""
    import json

    from edgepipe.core.files import atomic_output
    from edgepipe.pipeline.compare import compare, load_report
    from edgepipe.pipeline.diff import regressions, render_html, render_markdown, verdict

    o, n = load_report(old, "OLD"), load_report(new, "NEW")
    if html_path is not None:  # never over an input, a report or any file that is not such a page
        from edgepipe.runtime.cli_io import refuse_foreign_output

        if html_path.resolve() in (o.path, n.path):
            raise EdgepipeError(f"--html {html_path} is one of the reports compared", "write the page elsewhere")
        refuse_foreign_output(html_path, "--html", "an HTML page", (b"<!doctype html", b"<!DOCTYPE html", b"<html"),
                              devices_ok=False)
    c = compare(o.report, n.report, allow_common=common, where=(f"OLD ({old})", f"NEW ({new})"))
    found = regressions(c, max_accuracy_drop, max_latency_increase)
    if html_path is not None:
        with atomic_output(html_path) as tmp:
            tmp.write_text(render_html(c, found), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(c.to_json() | {"verdict": verdict(c, found), "regressions": [
            {"artifact": r.artifact, "problem": r.problem} for r in found]}, indent=2))
    else:
        click.echo(render_markdown(c, found), nl=False)
    if found:
        sys.exit(3)


@cli.command()
@click.argument("record", required=False, type=click.Choice(["verify-results", "report", "bundle", "cv", "explain-gallery"]))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="write every schema to OUT/<record>.json instead of printing one")
@_guard
def schema(record: str | None, out_dir: Path | None) -> None:
    """Print the JSON schema of a record edgepipe writes (verify/results.json, report.json, bundle.json, cv/cv.json,
    explain/gallery.json)."""
    import json

    from edgepipe.core.files import atomic_output
    from edgepipe.pipeline.records import json_schemas

    schemas = json_schemas()
    if out_dir is None:
        if record is None:
            raise click.UsageError("name a record (verify-results, report, bundle, cv, explain-gallery) or pass --out DIR")
        click.echo(json.dumps(schemas[record], indent=2))
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, body in schemas.items():
        if record in (None, name):
            with atomic_output(out_dir / f"{name}.json") as tmp:
                tmp.write_text(json.dumps(body, indent=2) + "\n")
            click.echo(f"wrote {out_dir / f'{name}.json'}")


# predict / bench / check / engine: the field-unit commands, which need no build tools.
from edgepipe.runtime.cli import add_runtime_commands  # noqa: E402  (they reuse _guard, defined above)

add_runtime_commands(cli, _guard)


def main() -> None:
    cli()
