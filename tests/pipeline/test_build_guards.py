"""A build never measures on data other than the one it trained on, never says "interrupted" after
bad input, never races another build, never deletes another build's bundles, and ends every
environment error (full disk, a file where a folder belongs, a damaged manifest) as one line.

Every test starts from a private copy of the finished tiny build (tests/pipeline/conftest.py)."""

import errno
import fcntl
import json
import os

import pytest
import yaml
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.pipeline.ownership import LOCK_NAME, OWNER_NAME
from tests.conftest import write_image
from tests.corpus import DAMAGED_MANIFESTS
from tests.pipeline.conftest import build, manifest, ran


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    assert "Traceback" not in result.output and "internal error" not in result.output


def outputs_snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in (LOCK_NAME, "manifest.json")}


@pytest.mark.parametrize("command", ["verify", "quantize", "report", "bundle"])
def test_a_single_stage_command_refuses_when_the_dataset_changed_since_training(project, command):
    root, configure = project
    cfg = configure()
    before_manifest, before = manifest(root), outputs_snapshot(root / "out")
    write_image(root / "data" / "vertical" / "new.png", size=(32, 32), seed=99)  # redraws the split
    result = invoke(command, cfg)
    one_line_error(result, 2, "out of date", "finetune", "dataset", "edgepipe build")
    after = manifest(root)
    assert after["dataset"] == before_manifest["dataset"]  # the recorded split is not overwritten
    assert after["stages"] == before_manifest["stages"]
    assert outputs_snapshot(root / "out") == before  # nothing measured, nothing rewritten
    assert build(cfg).exit_code == 0 and ran(root)[0] == "finetune"  # the fix the message names works


def test_a_single_stage_command_refuses_an_upstream_whose_config_changed(project):
    root, configure = project
    configure(calibration={"size": 6})  # quantize's input: verify must not score the old artifacts
    result = invoke("verify", root / "build.yaml")
    one_line_error(result, 2, "quantize outputs that are out of date", "config.calibration")


def test_a_single_stage_command_still_runs_when_only_its_own_inputs_changed(project):
    root, configure = project
    result = invoke("report", configure(gates={"max_accuracy_drop": 0.5, "min_agreement": 0.1}))
    assert result.exit_code == 0, result.output


def test_bad_data_leaves_no_stage_marked_running(project):
    root, configure = project
    cfg = configure()
    (root / "data" / "vertical" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    one_line_error(build(cfg), 2, "broken.png")
    statuses = {s: e["status"] for s, e in manifest(root)["stages"].items()}
    assert "running" not in statuses.values(), statuses
    (root / "data" / "vertical" / "broken.png").unlink()
    result = build(cfg)
    assert result.exit_code == 0 and "interrupted" not in result.stderr, result.stderr


def test_a_second_build_of_the_same_output_dir_is_refused_naming_the_first(project):
    root, configure = project
    cfg = configure()
    fd = os.open(root / "out" / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.write(fd, json.dumps({"pid": 4242, "host": "ci-7", "started": "2026-12-01T00:00:00+00:00",
                             "command": "edgepipe build"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: conflicts as another process would
    try:
        before = outputs_snapshot(root / "out")
        one_line_error(build(cfg), 2, "in use by another edgepipe build", "pid 4242 on host ci-7")
        one_line_error(invoke("verify", cfg), 2, "in use by another edgepipe build")
        assert outputs_snapshot(root / "out") == before
    finally:
        os.close(fd)
    # The lock of a killed build is released with its process: its file alone blocks nothing.
    assert build(cfg).exit_code == 0


def test_two_configs_with_one_name_and_dist_dir_do_not_delete_each_others_bundles(project):
    root, configure = project
    cfg = configure()
    bundles = root / "dist" / "tiny"
    assert (bundles / OWNER_NAME).is_file()
    before = {p.name: p.stat().st_mtime_ns for p in bundles.iterdir()}
    other = yaml.safe_load(cfg.read_text()) | {"output_dir": "out-other"}
    (root / "other.yaml").write_text(yaml.safe_dump(other))
    result = build(root / "other.yaml")
    one_line_error(result, 2, f"bundle folder {bundles} belongs to the build in {root / 'out'}", "another `name`")
    assert not (root / "out-other" / "finetune").exists()  # refused before any work
    assert {p.name: p.stat().st_mtime_ns for p in bundles.iterdir()} == before


@pytest.mark.parametrize("make_blocker", [
    lambda out: out.write_text("not a folder"),            # output_dir is an existing file
    lambda out: (out.parent / "file").write_text("x"),     # output_dir below a file
])
def test_an_output_dir_that_cannot_be_a_folder_is_one_line(tmp_path, make_blocker):
    from tests.conftest import write_tiny_project

    cfg = write_tiny_project(tmp_path)
    out = tmp_path / "out"
    make_blocker(out)
    data = yaml.safe_load(cfg.read_text())
    if not out.exists():
        data["output_dir"] = "file/out"
        cfg.write_text(yaml.safe_dump(data))
    result = build(cfg)
    one_line_error(result, 2)
    assert "not a folder" in result.stderr or "Not a directory" in result.stderr


def test_a_full_disk_is_one_line_and_keeps_the_finished_outputs(project, monkeypatch):
    root, configure = project
    cfg = configure(gates={"max_accuracy_drop": 0.9})  # only the report reruns, and it writes
    before = outputs_snapshot(root / "out")

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("edgepipe.pipeline.report.write_json", disk_full)
    one_line_error(build(cfg), 2, "report.json: No space left on device", "free space")
    assert outputs_snapshot(root / "out") == before
    monkeypatch.undo()
    result = build(cfg)
    assert result.exit_code == 0 and ran(root) == ["report"], result.output


@pytest.mark.parametrize("name", sorted(DAMAGED_MANIFESTS))
def test_a_damaged_manifest_is_one_line_with_the_fix(project, name):
    root, configure = project
    cfg = configure()
    path = root / "out" / "manifest.json"
    path.write_bytes(DAMAGED_MANIFESTS[name](path.read_bytes()))
    damaged = path.read_bytes()
    for command in ("build", "report"):
        one_line_error(invoke(command, cfg), 2, "manifest.json", "mv ")
    assert path.read_bytes() == damaged  # left for the user to inspect


def test_fine_tune_trains_with_exactly_four_optimizer_steps(tmp_path):
    """OneCycleLR's zero-length warm-up at 4 steps crashed the build (ZeroDivisionError, exit 1)."""
    from tests.conftest import write_tiny_project

    # 12 train images, batch 32: one step per epoch, four epochs
    cfg = write_tiny_project(tmp_path, finetune={"warmup_epochs": 1, "epochs": 4, "batch_size": 32, "patience": 4})
    result = invoke("finetune", cfg)
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["dataset"]["sizes"]["train"] == 12 and m["stages"]["finetune"]["metrics"]["epochs_run"] == 4


def test_build_sign_signs_bundles_that_are_otherwise_up_to_date(project, tmp_path):
    from edgepipe.runtime.bundle import load_bundle

    root, configure = project
    cfg = configure()
    assert invoke("keygen", tmp_path / "release.key").exit_code == 0
    assert build(cfg).exit_code == 0  # every stage up to date, the bundles unsigned
    result = build(cfg, "--sign", tmp_path / "release.key")
    assert result.exit_code == 0, result.output
    assert "bundle: running (--sign: the bundles are not signed by key" in result.stderr
    assert ran(root) == []  # nothing else reran
    for folder in (root / "dist" / "tiny").iterdir():
        if folder.is_dir():
            assert load_bundle(folder, trusted_keys=[tmp_path / "release.key.pub"]).signed_by
    result = build(cfg, "--sign", tmp_path / "release.key")  # signed by that key now: up to date
    assert result.exit_code == 0 and "bundle: up to date" in result.stderr, result.stderr


def test_a_bad_signing_key_fails_before_any_stage_runs(project, tmp_path):
    root, configure = project
    cfg = configure(calibration={"size": 6})  # quantize and later would rerun
    (tmp_path / "bad.key").write_text("not a key")
    before = manifest(root)
    one_line_error(build(cfg, "--sign", tmp_path / "bad.key"), 2, "not a PEM private key")
    assert manifest(root) == before


def test_junit_never_overwrites_what_it_did_not_write(project):
    root, configure = project
    cfg = configure()
    config_bytes = cfg.read_bytes()
    one_line_error(build(cfg, "--junit", cfg), 2, "does not hold a JUnit XML report")
    assert cfg.read_bytes() == config_bytes
    image = sorted((root / "data" / "vertical").iterdir())[0]
    one_line_error(build(cfg, "--junit", image), 2, "does not hold a JUnit XML report")
    os.mkfifo(root / "fifo")
    one_line_error(build(cfg, "--junit", root / "fifo"), 2, "not a regular file")
    assert (root / "fifo").is_fifo()
    assert build(cfg, "--junit", root / "junit.xml").exit_code == 0
    assert build(cfg, "--junit", root / "junit.xml").exit_code == 0  # its own report: rewritten


def test_a_bundle_folder_holding_files_edgepipe_did_not_write_is_refused(project):
    root, configure = project
    cfg = configure(name="other")  # dist/other does not belong to this output dir yet
    mine = root / "dist" / "other" / "onnxruntime-fp32" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    one_line_error(build(cfg), 2, "which edgepipe did not write")
    assert mine.read_text() == "mine"


def test_the_python_api_checks_what_the_cli_checks(tmp_path):
    """`edgepipe.build` refuses an unknown --force stage and a --junit over a foreign file, as the CLI does."""
    import edgepipe
    from edgepipe.core.errors import EdgepipeError
    from tests.conftest import write_tiny_project

    cfg = write_tiny_project(tmp_path)
    with pytest.raises(EdgepipeError, match="--force quantise: no such stage"):
        edgepipe.build(cfg, force_from="quantise")
    with pytest.raises(EdgepipeError, match="does not hold a JUnit XML report"):
        edgepipe.build(cfg, junit=cfg)
    assert not (tmp_path / "out" / "finetune").exists()
    assert edgepipe.load_config(cfg).name == "tiny" and edgepipe.Predictor.__name__ == "Predictor"


@pytest.mark.parametrize("tamper", ["model-file", "labels", "signature"])
def test_a_bundle_changed_after_the_build_is_rewritten_by_the_next_build(project, tmp_path, tamper):
    root, configure = project
    cfg = configure()
    assert invoke("keygen", tmp_path / "k").exit_code == 0
    assert build(cfg, "--sign", tmp_path / "k").exit_code == 0
    folder = root / "dist" / "tiny" / "onnxruntime-fp32"
    if tamper == "model-file":
        (folder / "model.onnx").write_bytes(b"x")
    elif tamper == "labels":
        meta = json.loads((folder / "bundle.json").read_text())
        (folder / "bundle.json").write_text(json.dumps(meta | {"labels": meta["labels"][::-1]}))
    else:
        (folder / "bundle.sig").unlink()
    result = build(cfg, "--sign", tmp_path / "k")
    assert result.exit_code == 0 and f"bundle: running (bundle {folder}" in result.stderr, result.stderr
    from edgepipe.runtime.bundle import load_bundle

    assert load_bundle(folder, trusted_keys=[tmp_path / "k.pub"]).signed_by
