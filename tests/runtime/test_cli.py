"""predict / bench / check / engine through the command line, as a field unit calls them."""

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.runtime.bundle import seal
from edgepipe.runtime.cli_io import expand_inputs
from tests.corpus import HOSTILE_OUTPUTS, HOSTILE_PREDICT_INPUTS
from tests.pipeline.test_cli import one_line_error


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def _lines(text):
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def mixed_folder(tiny_build, tmp_path):
    """Six good images (one in a sub-folder), a corrupt PNG and a text file that is not an image."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good = sorted(tiny_build["images"].rglob("*.png"))[:6]
    for i, f in enumerate(good):
        shutil.copyfile(f, folder / ("sub" if i == 5 else "") / f"{i}.png")
    (folder / "3b-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "notes.txt").write_text("not an image, not a .png: not picked up")
    return folder


def test_predict_folder_with_a_corrupt_image_gives_an_error_line_and_predicts_the_rest(tiny_build, mixed_folder):
    result = invoke("predict", tiny_build["dist"] / "openvino-fp32", mixed_folder)
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert len(lines) == 7
    errors = [ln for ln in lines if "error" in ln]
    assert [e["path"] for e in errors] == [str(mixed_folder / "3b-corrupt.png")]
    assert "cannot read image" in errors[0]["error"]
    assert lines.index(errors[0]) == 4, "lines come in input order, the run went on after the bad file"
    for ln in lines:
        if "error" not in ln:
            assert ln["label"] in ("left", "right") and set(ln["probabilities"]) == {"left", "right"}
    assert "6 image(s) predicted, 1 unreadable" in result.stderr


def test_predict_jsonl_file_and_batches(tiny_build, mixed_folder, tmp_path):
    out = tmp_path / "out.jsonl"
    result = invoke("predict", tiny_build["dist"] / "onnxruntime-int8", mixed_folder, "--jsonl", out, "--batch", "4")
    assert result.exit_code == 0 and result.stdout == ""
    lines = _lines(out.read_text())
    assert len(lines) == 7 and sum("error" in ln for ln in lines) == 1
    # 4 inputs per batch: 0-3, then 3b (unreadable), 4, sub/5
    assert [ln["batch"] for ln in lines if "batch" in ln] == [4, 4, 4, 4, 2, 2]


def test_predict_with_nothing_readable_exits_2(tiny_build, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    result = invoke("predict", tiny_build["dist"] / "onnxruntime-fp32", tmp_path / "bad.png", tmp_path / "missing.png")
    one_line_error(result, 2, "none of the 2 image(s) could be read")
    assert [ln["path"] for ln in _lines(result.stdout)] == [str(tmp_path / "bad.png"), str(tmp_path / "missing.png")]


def test_predict_refuses_a_tampered_bundle_in_one_line(bundle_copy, tiny_build):
    folder = bundle_copy()
    (folder / "model.onnx").write_bytes(b"x")
    one_line_error(invoke("predict", folder, tiny_build["images"]), 2, "model.onnx has 1 bytes")


def test_check_reports_accuracy_and_gates_a_mismatch(tiny_build, tmp_path):
    bundle = tiny_build["dist"] / "onnxruntime-fp32"
    verified = json.loads((bundle / "bundle.json").read_text())["verified"]["accuracy"]
    result = invoke("check", bundle, tiny_build["images"], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == verified
    assert f"accuracy {verified:.2%} on 64 images" in result.stderr and "difference +0.00 pt" in result.stderr
    # labels swapped: what a preprocessing or labelling mismatch looks like on the device
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_build["images"] / "left", swapped / "right")
    shutil.copytree(tiny_build["images"] / "right", swapped / "left")
    one_line_error(invoke("check", bundle, swapped, "--min-accuracy", "0.9"), 3, "is below --min-accuracy 90.00%")
    (swapped / "cat").mkdir()
    one_line_error(invoke("check", bundle, swapped), 2, "sub-folder(s) cat of")


def test_bench_uses_the_build_method_and_shows_the_build_numbers(tiny_build):
    bundle = tiny_build["dist"] / "onnxruntime-fp32"
    meta = json.loads((bundle / "bundle.json").read_text())
    result = invoke("bench", bundle, "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["method"]["runs"] == r["latency_ms"]["runs"] == meta["verified"]["method"]["runs"] == 5
    assert r["method"]["warmup"] == 1 and r["method"]["throughput_batch"] == 8 and r["method"]["priming_batches"] == 8
    assert r["machine"]["threads"] == 1 and r["machine"]["cpu"]
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert r["build"]["latency_ms"] == meta["verified"]["latency_ms"]
    table = invoke("bench", bundle, "--runs", "6", "--threads", "2")
    assert table.exit_code == 0 and "build (verify)" in table.stderr and "2 threads" in table.stderr


def test_engine_skips_without_tensorrt_and_refuses_other_targets(tiny_build, bundle_copy):
    if importlib.util.find_spec("tensorrt"):
        pytest.skip("TensorRT is installed here")
    one_line_error(invoke("engine", bundle_copy("tensorrt-int8")), 4, "TensorRT engine build skipped")
    one_line_error(invoke("engine", tiny_build["dist"] / "onnxruntime-fp32"), 2, "runs as it is")


def _spawn(args, **kw):
    return subprocess.Popen([sys.executable, "-c", "from edgepipe.cli import main; main()", *map(str, args)], **kw)


@pytest.mark.parametrize("to_file", [True, False])
def test_lines_written_so_far_are_complete_after_a_kill(tiny_build, tmp_path, to_file):
    """A long run (the test images 200 times over) is killed once 4 lines are out, wherever it is:
    the lines done must already be in the file (written as it goes), whole and in input order.
    (A FIFO no longer stalls a run: it is refused at once with an error line.)"""
    images = sorted(tiny_build["images"].rglob("*.png")) * 200
    out = tmp_path / "out.jsonl"
    args = ["predict", tiny_build["dist"] / "onnxruntime-fp32", *[tiny_build["images"]] * 200]
    if to_file:
        proc = _spawn([*args, "--jsonl", out], stderr=subprocess.DEVNULL)
    else:
        with open(out, "wb") as f:
            proc = _spawn(args, stdout=f, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 4):
            assert proc.poll() is None, "the run ended before 4 lines were out"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = out.read_text()
    assert text.endswith("\n")
    lines = _lines(text)
    assert len(lines) >= 4
    assert [ln["path"] for ln in lines] == list(map(str, images[:len(lines)]))
    assert [ln["input_index"] for ln in lines] == list(range(len(lines)))
    assert all(ln["label"] in ("left", "right") for ln in lines)


def test_every_device_command_warns_about_a_bundle_that_failed_its_gates(bundle_copy, tiny_build):
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    meta["gates"] = {"passed": False, "failed": ["min_agreement: 0.9 vs limit 0.98"]}
    (folder / "bundle.json").write_text(json.dumps(seal(meta)))  # a build-side edit: re-sealed, as the bundle stage would
    image = min(tiny_build["images"].rglob("*.png"))
    for args in (("predict", folder, image), ("check", folder, tiny_build["images"]), ("bench", folder, "--runs", "5")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "failed its build gates: min_agreement: 0.9 vs limit 0.98" in result.stderr, args


class Hung(Exception):
    pass


@contextmanager
def deadline(seconds: int = 60):
    """Fail, instead of hanging the suite, when a run blocks on an input (a FIFO)."""
    def fail(*_):
        raise Hung(f"still running after {seconds} s: blocked on an input?")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8])
def test_predict_lines_come_in_input_order_with_their_input_index(tiny_build, mixed_folder, tmp_path, batch):
    """With --batch 3 the corrupt file is the 2nd of its batch: its error line must still come after
    the batch's first image, not before the batch's predictions."""
    out = tmp_path / "out.jsonl"
    result = invoke("predict", tiny_build["dist"] / "onnxruntime-fp32", mixed_folder, "--jsonl", out, "--batch", batch)
    assert result.exit_code == 0, result.output
    lines = _lines(out.read_text())
    assert [ln["path"] for ln in lines] == list(map(str, expand_inputs((str(mixed_folder),))))
    assert [ln["input_index"] for ln in lines] == list(range(7))
    assert [("error" in ln) for ln in lines] == [False] * 4 + [True] + [False] * 2
    assert all(ln["index"] in (0, 1) for ln in lines if "error" not in ln), "index stays the predicted class"


@pytest.mark.parametrize("case", sorted(HOSTILE_PREDICT_INPUTS))
def test_predict_survives_a_hostile_input_with_one_error_line(tiny_build, tmp_path, case):
    """FIFO, /dev/zero, a sparse 300 MiB file, a folder given as a file: each is an error line (refused
    before any byte is read), the images around it are predicted, exit 0; alone, exit 2."""
    make, fragment = HOSTILE_PREDICT_INPUTS[case]
    bad = make(tmp_path)
    good = sorted(tiny_build["images"].rglob("*.png"))[:2]
    bundle = tiny_build["dist"] / "onnxruntime-fp32"
    with deadline():
        result = invoke("predict", bundle, good[0], bad, good[1], "--batch", 2)
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [ln["path"] for ln in lines] == [str(good[0]), str(bad), str(good[1])]
    assert [ln["input_index"] for ln in lines] == [0, 1, 2]
    assert "label" in lines[0] and "label" in lines[2] and "label" not in lines[1]
    assert fragment in lines[1]["error"] and "cannot read image" in lines[1]["error"]
    assert "2 image(s) predicted, 1 unreadable" in result.stderr
    with deadline():
        alone = invoke("predict", bundle, bad)
    one_line_error(alone, 2, "none of the 1 image(s) could be read")
    assert [(ln["path"], ln["input_index"]) for ln in _lines(alone.stdout)] == [(str(bad), 0)]


@pytest.mark.parametrize("case", sorted(HOSTILE_PREDICT_INPUTS))
def test_check_survives_a_hostile_entry_in_the_labelled_folder(tiny_build, tmp_path, case):
    """check walks FOLDER/<label>/: a regular file over the size limit is listed as unreadable; a
    FIFO, a device link or a folder named *.png is not a regular file and is not taken. Exit 0."""
    folder = tmp_path / "labelled"
    for label in ("left", "right"):
        (folder / label).mkdir(parents=True)
        for f in sorted((tiny_build["images"] / label).glob("*.png"))[:3]:
            shutil.copyfile(f, folder / label / f.name)
    make, fragment = HOSTILE_PREDICT_INPUTS[case]
    bad = make(folder / "left")
    if bad.parent != folder / "left":  # a system path (/dev/zero): linked in under an image name
        (folder / "left" / f"{case}.png").symlink_to(bad)
        bad = folder / "left" / f"{case}.png"
    with deadline():
        result = invoke("check", tiny_build["dist"] / "onnxruntime-fp32", folder, "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["images"] == 6
    unreadable = {u["path"]: u["error"] for u in r["unreadable"]}
    if bad.is_file():
        assert fragment in unreadable[str(bad)]
        assert f"unreadable: {bad}" in result.stderr
    else:
        assert not unreadable


def _state(path):
    return path.read_bytes() if path.is_file() and not path.is_symlink() else path.exists()


@pytest.mark.parametrize("as_folder", [False, True])
@pytest.mark.parametrize("case", sorted(HOSTILE_OUTPUTS))
def test_predict_refuses_a_hostile_jsonl_output_in_one_line(tiny_build, tmp_path, case, as_folder):
    """--jsonl that is an input (as given, in an input folder, through a hard or symbolic link), an
    existing image (by suffix or by its first bytes, every format), a path in a missing folder or
    under a file, or a full disk: one "error:" line naming the cause, exit 2, no traceback, and an
    existing file's bytes untouched. The refusals come before the bundle is loaded."""
    (tmp_path / "in").mkdir()
    images = []
    for i, f in enumerate(sorted(tiny_build["images"].rglob("*.png"))[:2]):
        images.append(tmp_path / "in" / f"{i}.png")
        shutil.copyfile(f, images[-1])
    make, fragment = HOSTILE_OUTPUTS[case]
    out = make(tmp_path, images[0])
    inputs = [tmp_path / "in"] if as_folder else images
    before, image_bytes = _state(out), [f.read_bytes() for f in images]
    result = invoke("predict", tiny_build["dist"] / "onnxruntime-fp32", *inputs, "--jsonl", out)
    one_line_error(result, 2, fragment)
    assert str(out) in result.stderr.splitlines()[-1]
    if case == "dev-full":
        assert "lines written so far are complete" in result.stderr
    else:
        assert _state(out) == before
    assert [f.read_bytes() for f in images] == image_bytes
    if case.startswith("output-"):  # refused before the bundle is even loaded
        one_line_error(invoke("predict", tmp_path / "no-such-bundle", *inputs, "--jsonl", out), 2, fragment)
        assert [f.read_bytes() for f in images] == image_bytes


def test_predict_overwrites_an_existing_jsonl_and_writes_to_dev_null(tiny_build, tmp_path):
    image = min(tiny_build["images"].rglob("*.png"))
    out = tmp_path / "out.jsonl"
    out.write_text('{"old": "lines"}\n' * 50)
    result = invoke("predict", tiny_build["dist"] / "onnxruntime-fp32", image, "--jsonl", out)
    assert result.exit_code == 0, result.output
    assert [(ln["path"], ln["input_index"]) for ln in _lines(out.read_text())] == [(str(image), 0)]
    # not a regular file: written, not fsynced (fsync fails on devices and pipes)
    result = invoke("predict", tiny_build["dist"] / "onnxruntime-fp32", image, "--jsonl", "/dev/null")
    assert result.exit_code == 0, result.output


def test_check_on_a_folder_without_a_class_reports_its_recall_as_n_a(tiny_build, tmp_path):
    folder = tmp_path / "left-only"
    shutil.copytree(tiny_build["images"] / "left", folder / "left")
    result = invoke("check", tiny_build["dist"] / "onnxruntime-fp32", folder, "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["per_class_recall"]["right"] is None and r["per_class_recall"]["left"] > 0.9
    assert '"right": null' in result.stdout
    assert "right n/a" in result.stderr and "right 0.00%" not in result.stderr
    if r["confusion"][0][1] == 0:  # no image called "right": macro F1 is left's alone, not dragged to 0.5
        assert r["macro_f1"] == 1.0


@pytest.mark.parametrize("damage", ["drop-a-class", "one-unreadable-image"])
def test_check_refuses_to_gate_on_incomplete_data(tiny_build, tmp_path, damage):
    """Without a class (or with images it could not read) the accuracy is over what happened to be
    readable: it can pass a gate the full folder fails. A gate never passes on bad data."""
    folder = tmp_path / "labelled"
    shutil.copytree(tiny_build["images"], folder)
    if damage == "drop-a-class":
        shutil.rmtree(folder / "right")
        fragment = "has no readable image of right"
    else:
        sorted((folder / "left").iterdir())[0].write_bytes(b"not an image")
        fragment = "1 of 64 could not be read"
    bundle = tiny_build["dist"] / "onnxruntime-fp32"
    one_line_error(invoke("check", bundle, folder, "--min-accuracy", "0.01"), 2, fragment)
    assert invoke("check", bundle, folder).exit_code == 0  # without a gate it still reports


def test_a_refused_bundle_leaves_the_previous_predictions_file_intact(bundle_copy, tiny_build, tmp_path):
    folder = bundle_copy()
    (folder / "model.onnx").write_bytes(b"tampered")
    out = tmp_path / "predictions.jsonl"
    out.write_text('{"path": "earlier.png", "label": "left"}\n')
    image = sorted((tiny_build["images"] / "left").iterdir())[0]
    one_line_error(invoke("predict", folder, image, "--jsonl", out), 2, "model.onnx")
    assert out.read_text() == '{"path": "earlier.png", "label": "left"}\n'
