"""`edgepipe engine`: skipped with exit 4 without TensorRT; with it, the plan lands in the bundle as
an allowed device file, and the Predictor checks it. TensorRT itself cannot run here: the builder
is replaced by a stand-in that records what it was asked to build."""

import importlib.util
import json
from types import SimpleNamespace

import pytest

import edgepipe.targets.tensorrt.runner
from edgepipe.core.errors import BackendMissing, BundleError, EngineSkipped
from edgepipe.runtime.bundle import load_bundle
from edgepipe.runtime.engine import build_bundle_engine
from edgepipe.runtime.predictor import make_runner

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_engine_build_is_skipped_with_exit_4(bundle_copy):
    with pytest.raises(EngineSkipped) as e:
        build_bundle_engine(bundle_copy("tensorrt-int8"))
    assert e.value.exit_code == 4 and "TensorRT engine build skipped" in str(e.value) and "Jetson" in str(e.value)


def test_engine_is_refused_for_a_bundle_of_another_target(bundle_copy):
    with pytest.raises(BundleError, match="onnxruntime bundle: it runs as it is"):
        build_bundle_engine(bundle_copy("onnxruntime-fp32"))


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT stand-in: records the build_engine call and writes a plan file."""
    calls = []

    def build_engine(onnx, plan, precision, **kwargs):
        calls.append({"onnx": onnx.name, "precision": precision, **kwargs})
        plan.write_bytes(b"serialized plan for " + onnx.name.encode())
        return plan

    def use(version: str):
        trt = SimpleNamespace(__version__=version)
        engine = SimpleNamespace(major_version=lambda t: int(t.__version__.split(".")[0]), build_engine=build_engine)
        monkeypatch.setattr(edgepipe.targets.tensorrt.runner, "_tensorrt", lambda: (trt, engine))
        return calls

    return use


@pytest.mark.parametrize("bundle, version, onnx", [("tensorrt-int8", "10.3.0", "model_qdq.onnx"),
                                                   ("tensorrt-fp16", "10.3.0", "model.onnx"),
                                                   ("tensorrt-fp16", "11.4.1", "model_fp16.onnx")])
def test_engine_builds_from_the_graph_its_tensorrt_version_needs(bundle_copy, fake_tensorrt, bundle, version, onnx):
    calls = fake_tensorrt(version)
    folder = bundle_copy(bundle)
    info = build_bundle_engine(folder, max_batch=4)
    assert calls[0]["onnx"] == onnx and calls[0]["max_batch"] == 4 and calls[0]["timing_cache"] == folder / "timing.cache"
    assert info["tensorrt"] == version and json.loads((folder / "engine.json").read_text()) == info
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]
    load_bundle(folder)  # the plan and engine.json are device files, not tampering


def test_predictor_checks_the_plan_against_engine_json(bundle_copy, fake_tensorrt):
    fake_tensorrt("10.3.0")
    folder = bundle_copy("tensorrt-int8")
    build_bundle_engine(folder)
    if not HAS_TRT:  # past the plan check, the runner needs TensorRT itself
        with pytest.raises(BackendMissing, match="needs tensorrt"):
            make_runner(load_bundle(folder), threads=1)
    (folder / "model.plan").write_bytes(b"another plan")
    with pytest.raises(BundleError, match="model.plan does not match engine.json"):
        make_runner(load_bundle(folder), threads=1)


def test_engine_with_trust_refuses_an_unsigned_bundle_before_building(bundle_copy, tmp_path):
    """A device that runs only signed bundles must not build an engine from an unsigned one."""
    from click.testing import CliRunner

    from edgepipe.cli import cli

    keys = tmp_path / "k"
    assert CliRunner().invoke(cli, ["keygen", str(keys)]).exit_code == 0
    result = CliRunner().invoke(cli, ["engine", str(bundle_copy("tensorrt-int8")), "--trust", f"{keys}.pub"])
    assert result.exit_code == 2 and "not signed" in result.stderr, result.output


def test_a_damaged_engine_record_is_one_line(bundle_copy):
    folder = bundle_copy("tensorrt-int8")
    (folder / "model.plan").write_bytes(b"plan")
    (folder / "engine.json").write_text("{not json")
    with pytest.raises(BundleError, match="engine.json is damaged"):
        make_runner(load_bundle(folder), threads=1)
