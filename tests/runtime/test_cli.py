"""predict / bench / check / engine through the command line, as a field unit calls them."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
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
    return subprocess.Popen([sys.executable, "-c", "from pipeline.cli import main; main()", *map(str, args)], **kw)


@pytest.mark.parametrize("to_file", [True, False])
def test_lines_written_so_far_are_complete_after_a_kill(tiny_build, tmp_path, to_file):
    """The 5th input is a FIFO nobody writes to: the run blocks there, with 4 images done. Their
    lines must already be in the file (written as it goes), whole, after SIGKILL."""
    images = sorted(tiny_build["images"].rglob("*.png"))
    fifo = tmp_path / "stuck.png"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    args = ["predict", tiny_build["dist"] / "onnxruntime-fp32", *images[:4], fifo, *images[4:20]]
    if to_file:
        proc = _spawn([*args, "--jsonl", out], stderr=subprocess.DEVNULL)
    else:
        with open(out, "wb") as f:
            proc = _spawn(args, stdout=f, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 4):
            assert proc.poll() is None, "the run ended before it reached the FIFO"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = out.read_text()
    assert text.endswith("\n")
    lines = _lines(text)
    assert [ln["path"] for ln in lines] == list(map(str, images[:4]))
    assert all(ln["label"] in ("left", "right") for ln in lines)


def test_every_device_command_warns_about_a_bundle_that_failed_its_gates(bundle_copy, tiny_build):
    folder = bundle_copy()
    meta = json.loads((folder / "bundle.json").read_text())
    meta["gates"] = {"passed": False, "failed": ["min_agreement: 0.9 vs limit 0.98"]}
    (folder / "bundle.json").write_text(json.dumps(meta))
    image = min(tiny_build["images"].rglob("*.png"))
    for args in (("predict", folder, image), ("check", folder, tiny_build["images"]), ("bench", folder, "--runs", "5")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "failed its build gates: min_agreement: 0.9 vs limit 0.98" in result.stderr, args
