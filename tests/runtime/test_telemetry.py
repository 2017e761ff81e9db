"""Telemetry: one record per prediction, holding the contract's fields and nothing that identifies
the image; rotation bounds the log; a SIGKILL leaves only whole records; `predict --telemetry`
appends and refuses a file that is not a telemetry log."""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgepipe.cli import cli
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.image_stats import STATS, _percentiles, image_stats
from edgepipe.runtime import Predictor
from edgepipe.runtime.telemetry import (
    DECIMALS,
    FIELDS,
    LineEncoder,
    TelemetryLog,
    TelemetryRecord,
    read_telemetry,
    records_for,
)
from tests.pipeline.test_cli import one_line_error

BUNDLE = "onnxruntime-int8"


def _record(t: float, label: str = "left") -> TelemetryRecord:
    return TelemetryRecord(t, "tiny", "onnxruntime", "int8", label, 0, 0.9, 0.8, dict.fromkeys(STATS, 1.5))


def _private_images(tiny_build, folder, n=3):
    """n of the test images under names a record must never show."""
    folder.mkdir(parents=True)
    out = []
    for i, f in enumerate(sorted(tiny_build["images"].rglob("*.png"))[:n]):
        out.append(folder / f"patient-7731-cell-{i}.png")
        shutil.copyfile(f, out[-1])
    return out


def test_records_hold_the_contract_and_nothing_that_identifies_the_image(tiny_build, tmp_path):
    images = _private_images(tiny_build, tmp_path / "private-site-A")
    log = tmp_path / "telemetry.jsonl"
    t0 = time.time()
    with Predictor(tiny_build["dist"] / BUNDLE, batch_size=2, telemetry=log) as p:
        preds = p.predict(images)
        pixels = np.stack([p.load(f) for f in images])
    text = log.read_text()
    for secret in ("private-site-A", "patient-7731", str(tmp_path)):
        assert secret not in text
    lines = text.splitlines()
    assert len(lines) == len(images) and text.startswith('{"v": 1, ') and text.endswith("\n")
    expected = image_stats(pixels)  # of the image as the model saw it (after the bundle's resize)
    for line, pred, stats in zip(lines, preds, expected):
        r = json.loads(line)
        assert list(r) == list(FIELDS) and list(r["stats"]) == list(STATS)
        TelemetryRecord.from_dict(r)
        assert (r["bundle"], r["target"], r["precision"]) == ("tiny", "onnxruntime", "int8")
        assert (r["label"], r["index"]) == (pred.label, pred.index)
        top = sorted(pred.probabilities.values())
        assert r["confidence"] == float(np.round(top[-1], 6))
        assert r["margin"] == pytest.approx(top[-1] - top[-2], abs=2e-6)
        assert t0 - 1e-3 <= r["t"] <= time.time() + 1e-3
        for s, v in zip(STATS, stats):
            assert r["stats"][s] == float(np.round(np.float64(v), DECIMALS[s]))
    assert [r["index"] for r in read_telemetry(log)] == [pred.index for pred in preds]


def test_a_darker_image_gives_a_lower_mean(tiny_build, tmp_path):
    image = np.asarray(Image.open(min(tiny_build["images"].rglob("*.png"))))
    log = tmp_path / "t.jsonl"
    with Predictor(tiny_build["dist"] / BUNDLE, telemetry=log) as p:
        p.predict([image, (image // 2).astype(np.uint8)])
    bright, dark = (r["stats"] for r in read_telemetry(log))
    assert dark["mean"] < bright["mean"] * 0.6 and dark["p95"] < bright["p95"]


def test_without_telemetry_no_statistics_are_computed(tiny_build, monkeypatch):
    import edgepipe.runtime.telemetry as telemetry

    def refuse(*a):
        raise AssertionError("image_stats ran without telemetry")

    monkeypatch.setattr(telemetry, "image_stats", refuse)
    with Predictor(tiny_build["dist"] / BUNDLE) as p:
        assert p.telemetry is None and p.predict(min(tiny_build["images"].rglob("*.png"))).label


def test_the_fast_line_encoder_writes_what_the_record_model_writes():
    rng = np.random.default_rng(0)
    meta = {"name": 'cells "A"', "target": "openvino", "precision": "int8"}
    labels = ["défaut", 'quote"d', "back\\slash"]
    for n in (1, 3, 8):
        probs = rng.dirichlet(np.ones(3), n)
        rgb8 = rng.integers(0, 256, (n, 64, 48, 3), dtype=np.uint8)
        fast = LineEncoder(meta, labels).lines(probs, rgb8, t=1764590000.1234)
        model = [(r.to_json() + "\n").encode() for r in records_for(meta, labels, probs, rgb8, t=1764590000.1234)]
        assert fast == model
        assert all(TelemetryRecord.from_dict(json.loads(line)) for line in fast)
    with pytest.raises(ValueError, match="not finite"):
        LineEncoder(meta, labels).lines(np.full((1, 3), np.nan), rgb8[:1])


def test_image_stats_percentiles_are_numpys():
    """core/image_stats.py computes the percentiles from one sort: the same bits as np.percentile."""
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 20, 1024, 3136, 3137):
        for flat in (rng.random((3, n), dtype=np.float32) * 255, rng.integers(0, 4, (2, n)).astype(np.float32)):
            want = np.percentile(flat, [5, 50, 95], axis=1).T
            got = _percentiles(flat)
            assert got.dtype == want.dtype and np.array_equal(got, want), n


def test_image_stats_is_the_plain_numpy_definition():
    """The fast image_stats equals its definition written the obvious way, bit for bit."""
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)

    def plain(rgb8):
        k = max(1, min(rgb8.shape[1:3]) // 56)
        gray = rgb8[:, ::k, ::k].astype(np.float32) @ luma
        flat = gray.reshape(len(gray), -1)
        lap = (4 * gray[:, 1:-1, 1:-1] - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1] - gray[:, 1:-1, :-2]
               - gray[:, 1:-1, 2:])
        sharp = lap.reshape(len(lap), -1).var(axis=1) if lap.size else np.zeros(len(gray), np.float32)
        pct = np.percentile(flat, [5, 50, 95], axis=1).T
        return np.column_stack([flat.mean(1), flat.std(1), pct, sharp]).astype(np.float32)

    rng = np.random.default_rng(2)
    for h, w in ((224, 224), (32, 32), (300, 171), (2, 9), (57, 112)):
        rgb8 = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
        rgb8[1] //= 50  # few distinct values: ties in the percentiles
        assert np.array_equal(image_stats(rgb8), plain(rgb8)), (h, w)


def test_rotation_bounds_the_log_and_the_reader_goes_oldest_first(tmp_path):
    path = tmp_path / "t.jsonl"
    with TelemetryLog(path, max_bytes=2048, keep=2) as log:
        for i in range(200):
            log.append(_record(float(i)))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["t.jsonl", "t.jsonl.1", "t.jsonl.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())
    records = read_telemetry(path)
    ts = [r["t"] for r in records]
    assert ts == list(np.arange(200 - len(ts), 200, dtype=float)) and len(ts) > 2 * (2048 // 300)
    assert records.skipped == 0
    assert [r["t"] for r in read_telemetry(path, include_rotated=False)] == ts[-len(path.read_text().splitlines()):]


def test_reading_the_last_records_parses_only_the_newest_files(tmp_path):
    """monitor wants the last window: the oldest file (full of junk here) is never parsed."""
    path = tmp_path / "t.jsonl"
    with TelemetryLog(path, max_bytes=2048, keep=3) as log:
        for i in range(60):
            log.append(_record(float(i)))
    oldest = max(tmp_path.glob("t.jsonl.*"), key=lambda p: int(p.suffix[1:]))
    oldest.write_text("junk\n" * 10)
    last = read_telemetry(path, last=5)
    assert [r["t"] for r in last] == [55.0, 56.0, 57.0, 58.0, 59.0] and last.skipped == 0
    across = read_telemetry(path, last=len(path.read_text().splitlines()) + 3)  # into the next file
    assert [r["t"] for r in across] == [float(t) for t in range(60 - len(across), 60)] and across.skipped == 0
    assert read_telemetry(path).skipped == 10  # the whole log: the junk is read and counted


def test_a_log_a_power_cut_damaged_is_taken_and_written_after(tmp_path):
    """Zero bytes where the last blocks were, or a first line torn in its opening: predictions must go
    on (the guard lets them through; the writer ends the bad line), a foreign file is still refused."""
    for damage in (b"\0" * 4096, b'{"v'):
        path = tmp_path / f"t{len(damage)}.jsonl"
        path.write_bytes(damage)
        with TelemetryLog(path) as log:
            log.append(_record(7.0))
        records = read_telemetry(path)
        assert [r["t"] for r in records] == [7.0] and records.skipped == 1


def test_a_line_cut_by_a_failed_write_does_not_spoil_the_next_record(tmp_path, monkeypatch):
    import edgepipe.runtime.telemetry as telemetry

    path = tmp_path / "t.jsonl"
    log = TelemetryLog(path)
    real = os.write
    calls = []

    def half_then_full(fd, data):  # a nearly full disk: half the line, then no space
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(telemetry.os, "write", half_then_full)
    with pytest.warns(RuntimeWarning):
        log.append(_record(1.0))
    monkeypatch.setattr(telemetry.os, "write", real)
    log.append(_record(2.0))
    log.close()
    records = read_telemetry(path)
    assert [r["t"] for r in records] == [2.0] and records.skipped == 1


def test_the_reader_skips_a_torn_line_and_the_next_writer_ends_it(tmp_path):
    path = tmp_path / "t.jsonl"
    with TelemetryLog(path) as log:
        log.append([_record(1.0), _record(2.0)])
    with open(path, "a") as f:  # what a power cut, a foreign writer or a newer edgepipe may leave
        f.write('not json\n{"v": 2, "t": 3}\n[1, 2]\n{"v": 1, "t": 4.0, "bundle": "ti')
    records = read_telemetry(path)
    assert [r["t"] for r in records] == [1.0, 2.0] and records.skipped == 4 and records.torn == 1
    with TelemetryLog(path) as log:  # the torn line is ended first: the new record stays whole
        log.append(_record(5.0))
    records = read_telemetry(path)
    assert [r["t"] for r in records] == [1.0, 2.0, 5.0] and records.skipped == 4 and records.torn == 0


def test_a_log_refuses_files_that_are_not_telemetry(tmp_path):
    config = tmp_path / "build.yaml"
    config.write_text("name: elpv\n")
    with pytest.raises(EdgepipeError, match="does not hold edgepipe telemetry"):
        TelemetryLog(config)
    key = tmp_path / "t.jsonl.2"  # rotation would have moved it
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(EdgepipeError, match="t.jsonl.2 is an existing file"):
        TelemetryLog(tmp_path / "t.jsonl")
    assert config.read_text() == "name: elpv\n" and key.read_text().startswith("-----BEGIN")
    with pytest.raises(EdgepipeError, match="not a regular file"):
        TelemetryLog(tmp_path)
    with pytest.raises(EdgepipeError, match="cannot write telemetry .*no such file"):
        TelemetryLog(tmp_path / "missing" / "t.jsonl")
    (tmp_path / "empty.jsonl").touch()
    TelemetryLog(tmp_path / "empty.jsonl").close()


def test_a_failed_write_drops_records_and_predictions_go_on(tiny_build, tmp_path):
    log = TelemetryLog(tmp_path / "t.jsonl")
    real_fd, log._fd, log._next_check = log._fd, os.open("/dev/full", os.O_WRONLY), float("inf")  # a full disk
    with Predictor(tiny_build["dist"] / BUNDLE, batch_size=4, telemetry=log) as p:
        with pytest.warns(RuntimeWarning, match="no space left on device"):
            preds = p.predict(sorted(tiny_build["images"].rglob("*.png"))[:6])
    assert len(preds) == 6 and log.dropped == 6 and log.written == 0 and "no space left" in log.error
    os.close(real_fd)
    log._next_check = 0.0  # the disk has room again: the next record finds the log's file and goes on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log.append(_record(1.0))
    assert log.written == 1 and len(read_telemetry(tmp_path / "t.jsonl")) == 1
    log.close()


# A field unit's loop: batch-1 predictions with telemetry, rotating every ~15 records (so kills land
# in rotations too), printing how many predictions have returned (their records are written).
CHILD = """
import sys
import numpy as np
from edgepipe.runtime import Predictor
from edgepipe.runtime.telemetry import TelemetryLog

log = TelemetryLog(sys.argv[2], max_bytes=4096, keep=10_000)
rgb8 = np.random.default_rng(int(sys.argv[3])).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
with Predictor(sys.argv[1], batch_size=1, telemetry=log) as p:
    i = 0
    while True:
        p.predict_pixels(rgb8[i % 16][None])
        i += 1
        print(i, flush=True)
"""


def test_telemetry_survives_sigkill(tiny_build, tmp_path):
    """Kill a predicting process with SIGKILL at a random point, three times, appending to one log:
    every record whose prediction returned is in it, at most the one in flight besides, and every
    line of every file (rotated ones too) is a whole record. A write() of a regular file is not
    interrupted by SIGKILL, so not even a torn last line is expected."""
    path, rng, confirmed = tmp_path / "telemetry.jsonl", np.random.default_rng(0), 0
    for run in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_build["dist"] / BUNDLE), str(path), str(run)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            target, deadline, acks = int(rng.integers(20, 80)), time.monotonic() + 120, 0
            while acks < target:
                line = proc.stdout.readline()
                assert line and time.monotonic() < deadline, "the child stopped before it was killed"
                acks = int(line)
            time.sleep(float(rng.uniform(0, 0.005)))  # land anywhere in a prediction
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -9
        rest = proc.stdout.read().split()
        acks = int(rest[-1]) if rest else acks
        proc.stdout.close()
        records = read_telemetry(path)
        assert records.skipped == 0 and records.torn == 0
        assert confirmed + acks <= len(records) <= confirmed + acks + 1, (run, confirmed, acks, len(records))
        confirmed = len(records)
    files = list(tmp_path.glob("telemetry.jsonl*"))
    assert len(files) > 3, "the runs rotated the log"
    lines = [ln for f in files for ln in f.read_bytes().split(b"\n")[:-1]]
    assert len(lines) == confirmed and all(f.read_bytes().endswith(b"\n") for f in files if f.stat().st_size)
    ts = [r["t"] for r in read_telemetry(path)]
    assert ts == sorted(ts)


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_predict_telemetry_appends_and_refuses_other_files(tiny_build, tmp_path):
    images = _private_images(tiny_build, tmp_path / "in")
    log = tmp_path / "telemetry.jsonl"
    for _ in range(2):
        result = invoke("predict", tiny_build["dist"] / BUNDLE, tmp_path / "in", "--telemetry", log, "--batch", "2")
        assert result.exit_code == 0, result.output
        assert f"telemetry: 3 record(s) appended to {log}" in result.stderr
    records = read_telemetry(log)
    predicted = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert len(records) == 6 and [r["label"] for r in records[3:]] == predicted
    assert "patient-7731" not in log.read_text() and str(tmp_path) not in log.read_text()

    config = tmp_path / "elpv.yaml"
    config.write_text("name: elpv\n")
    jsonl = tmp_path / "out.jsonl"
    for target, extra, fragment in ((config, (), "does not hold edgepipe telemetry"),
                                    (images[0], (), "does not hold edgepipe telemetry"),
                                    (jsonl, ("--jsonl", jsonl), "is also --jsonl")):
        before = {f: f.read_bytes() for f in (config, *images)}
        result = invoke("predict", tiny_build["dist"] / BUNDLE, *images, "--telemetry", target, *extra)
        one_line_error(result, 2, fragment)
        assert {f: f.read_bytes() for f in before} == before and not jsonl.exists()
