"""What a runner does with input it cannot answer for: a clear InputError (exit 2) before anything
runs, naming the problem and the fix, and the runner keeps answering valid input afterwards.
NaN / Inf input is an error, not a flagged result: its logits would argmax to class 0."""

import numpy as np
import pytest

from edgepipe.core.errors import InputError, MissingArtifactError
from edgepipe.targets import get_target
from edgepipe.targets.onnxruntime.config import OnnxRuntimeTargetConfig
from edgepipe.targets.openvino.config import OpenVinoTargetConfig

SETTINGS = {"onnxruntime": OnnxRuntimeTargetConfig(name="onnxruntime"), "openvino": OpenVinoTargetConfig(name="openvino")}


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def built(request, tiny, tmp_path_factory):
    target = get_target(request.param)
    if reason := target.unavailable_reason():
        pytest.skip(reason)
    [artifact] = target.build(tiny["onnx"], "fp32", None, tmp_path_factory.mktemp(request.param), SETTINGS[request.param])
    return target, artifact


@pytest.fixture
def runner(built):
    target, artifact = built
    with target.load(artifact, threads=1) as r:
        yield r


def answers_valid_input(runner, tiny) -> bool:
    return bool(np.allclose(runner.infer(tiny["x"][:4]), tiny["reference"][:4], atol=1e-3))


@pytest.mark.parametrize("bad", ["smaller image", "one image without batch", "NHWC", "two channels"])
def test_wrong_input_shape_is_named_with_the_shape_the_model_takes(runner, tiny, bad):
    x = tiny["x"][:2]
    x = {"smaller image": x[:, :, :16, :16], "one image without batch": x[0], "NHWC": x.transpose(0, 2, 3, 1),
         "two channels": x[:, :2]}[bad]
    with pytest.raises(InputError) as e:
        runner.infer(x)
    assert f"input shape {tuple(x.shape)} does not match the model's (N, 3, 32, 32)" in str(e.value)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert answers_valid_input(runner, tiny)


def test_nan_or_inf_input_is_refused_naming_the_images_and_nothing_runs(runner, tiny):
    x = tiny["x"][:4].copy()
    x[1, 0, 5, 5] = np.nan
    x[3, 2, 0, 0] = np.inf
    runner.inference_time = None
    with pytest.raises(InputError, match=r"2 of 4 input\(s\) hold NaN or Inf \(batch index 1, 3\); nothing was run"):
        runner.infer(x)
    assert runner.inference_time is None  # the model was not called
    good = runner.infer(x[[0, 2]])  # the valid images of that batch still get their answers
    assert np.allclose(good, tiny["reference"][[0, 2]], atol=1e-3)


def test_raw_integer_pixels_are_refused(runner, tiny):
    pixels = np.zeros((1, 3, 32, 32), np.uint8)
    with pytest.raises(InputError, match="input dtype uint8, but the model takes normalized float32"):
        runner.infer(pixels)
    assert answers_valid_input(runner, tiny)


def test_a_truncated_model_file_fails_to_load_with_a_clear_error(built, tmp_path):
    target, artifact = built
    broken = type(artifact)(artifact.target, artifact.precision, tmp_path / artifact.path.name,
                            [tmp_path / f.name for f in artifact.files])
    for src, dst in zip(artifact.files, broken.files):
        data = src.read_bytes()
        dst.write_bytes(data[: len(data) // 3] if src == artifact.path or src.suffix == ".bin" else data)
    runner = target.load(broken, threads=1)
    with pytest.raises(MissingArtifactError, match=rf"runner {artifact.name} cannot load its model \(") as e:
        runner.activate()
    assert not runner.is_active and e.value.exit_code == 2 and "\n" not in str(e.value)
