"""Every registered runner, at verify's throughput batch, through the three places that batch images: verify's
measurement, the fallback's scoring and the Predictor. A runner declares the largest batch it takes
(`max_batch`); the callers split by it. TensorRT runs on a stand-in that enforces the real API's
contracts (tests/fakes/tensorrt.py): a batch outside the engine's profile is refused, and the engine
dies with its Runtime."""

import json

import numpy as np
import pytest

from edgepipe.core.files import sha256_file
from edgepipe.pipeline.config import VerifyConfig
from edgepipe.pipeline.fallback import run_and_time
from edgepipe.pipeline.verify import measure
from edgepipe.runtime import Predictor
from edgepipe.targets import REGISTRY, get_target
from edgepipe.targets.base import Artifact
from edgepipe.targets.openvino.config import OpenVinoTargetConfig
from tests.conftest import TINY_SPEC, _images
from tests.fakes import tensorrt as fake_trt

THROUGHPUT = 32  # verify's default throughput batch; the engine's profile stops at 8
VCFG = VerifyConfig(threads=1, warmup=1, runs=5, throughput_batch=THROUGHPUT)


@pytest.fixture
def engine_runner(tmp_path, monkeypatch):
    fake_trt.install(monkeypatch)
    plan = tmp_path / "model.plan"
    plan.write_bytes(fake_trt.make_plan(max_batch=8))
    runner = get_target("tensorrt").load(Artifact("tensorrt", "int8", plan, [plan]), threads=1)
    return runner, plan.read_bytes()


def _runners(tiny, engine_runner, tmp_path):
    ort = get_target("onnxruntime").load(Artifact("onnxruntime", "fp32", tiny["onnx"], [tiny["onnx"]]), 1)
    ov = get_target("openvino")
    [ir] = ov.build(tiny["onnx"], "fp32", None, tmp_path / "openvino-fp32", OpenVinoTargetConfig())
    return {"onnxruntime": (ort, tiny["model"]), "openvino": (ov.load(ir, 1), tiny["model"]), "tensorrt": engine_runner}


RUNNERS = sorted(REGISTRY)  # every registered backend's runner


def test_every_runner_declares_its_input_and_batch_limit(tiny, engine_runner, tmp_path):
    runners = _runners(tiny, engine_runner, tmp_path)
    assert set(runners) == set(REGISTRY)
    for name, (runner, _) in runners.items():
        with runner:
            assert runner.input_name and runner.input_dtype == "float32", name
            assert runner.input_shape == (None, 3, 32, 32), name  # dynamic batch, fixed CHW
            assert runner.max_batch == (8 if name == "tensorrt" else None), name


def _expected(reference, x):
    import torch

    if isinstance(reference, bytes):
        return fake_trt.expected_logits(reference, x)
    with torch.no_grad():
        return reference(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", RUNNERS)
def test_verify_measures_every_runner_at_the_throughput_batch(tiny, engine_runner, tmp_path, name):
    runner, reference = _runners(tiny, engine_runner, tmp_path)[name]
    rgb8, _ = _images(40, seed=5)  # 40 images: batches of 32 + 8 for a dynamic runner, 5 x 8 for the engine
    m = measure(runner, rgb8, TINY_SPEC, VCFG)
    np.testing.assert_allclose(m["logits"], _expected(reference, TINY_SPEC.normalize(rgb8)), rtol=1e-4, atol=1e-4)
    assert m["throughput"]["batch"] == (8 if name == "tensorrt" else THROUGHPUT)
    assert m["latency_ms"]["runs"] == VCFG.runs


@pytest.mark.parametrize("name", RUNNERS)
def test_the_fallback_scores_every_runner_at_the_throughput_batch(tiny, engine_runner, tmp_path, name):
    runner, reference = _runners(tiny, engine_runner, tmp_path)[name]
    x = TINY_SPEC.normalize(_images(33, seed=6)[0])
    logits, p50 = run_and_time(runner, x, batch=THROUGHPUT, timed_runs=5)
    np.testing.assert_allclose(logits, _expected(reference, x), rtol=1e-4, atol=1e-4)
    assert p50 > 0


def test_the_engine_runner_declares_its_profile_and_refuses_a_larger_batch(engine_runner):
    runner, _ = engine_runner
    assert runner.max_batch is None  # not known before activation
    with runner:
        assert runner.max_batch == 8 and runner.input_shape == (None, 3, 32, 32)
        with pytest.raises(ValueError, match=r"outside the engine's optimization profile \(batch 1 to 8"):
            runner.infer(np.zeros((9, 3, 32, 32), np.float32))
        assert runner.infer(np.zeros((8, 3, 32, 32), np.float32)).shape == (8, 2)  # still usable


def test_the_engine_outlives_no_runtime(engine_runner):
    """The fake raises once the Runtime that deserialized the engine is garbage: the runner keeps it."""
    runner, _ = engine_runner
    with runner:
        for _ in range(3):
            runner.infer(np.zeros((2, 3, 32, 32), np.float32))


def test_the_predictor_splits_by_the_engines_batch(bundle_copy, monkeypatch):
    fake_trt.install(monkeypatch)
    folder = bundle_copy("tensorrt-int8")
    plan = fake_trt.make_plan(max_batch=8)
    (folder / "model.plan").write_bytes(plan)
    (folder / "engine.json").write_text(json.dumps({"plan_sha256": sha256_file(folder / "model.plan")}))
    rgb8, _ = _images(20, seed=7)
    with Predictor(folder, batch_size=THROUGHPUT) as p:
        assert p.batch_size == 8
        preds = p.predict(list(rgb8))
    want = fake_trt.expected_logits(plan, TINY_SPEC.normalize(rgb8)).argmax(1)
    assert [pr.index for pr in preds] == want.tolist() and {pr.batch for pr in preds} == {8, 4}
