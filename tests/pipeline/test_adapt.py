"""AdaBN (pipeline/adapt.py): only batch-norm statistics change; a shifted domain is normalised back."""

import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.errors import DataError
from edgepipe.core.preprocess import PreprocessSpec
from edgepipe.pipeline.adapt import adapt_batchnorm
from tests.conftest import write_image, write_tiny_project

SPEC = PreprocessSpec(image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mid-grey noise with a bright square on the left (class 0) or the right (class 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(100, 20, (n, 16, 16, 3))
    for i, y in enumerate(labels):
        x[i, 4:12, (1 if y == 0 else 9):(1 if y == 0 else 9) + 6] += 80
    return np.clip(x, 0, 255).astype(np.uint8), labels


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8 * 16, 2)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn(self.conv(x))))))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, (4, 4)).flatten(1))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x, y = _blobs(256, 0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 0.01)
    xt, yt = torch.from_numpy(SPEC.normalize(x)), torch.from_numpy(y)
    net.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), x


def _accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(SPEC.normalize(x))).argmax(1).numpy() == y).mean())


def _copy(net):
    other = Net()
    other.load_state_dict(net.state_dict())
    return other.eval()


def test_only_batchnorm_statistics_change(trained):
    net, source = trained
    model = _copy(net)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dark = (source * 0.4).astype(np.uint8)
    summary = adapt_batchnorm(model, source, dark, SPEC)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"bn.running_mean", "bn.running_var", "bn2.running_mean", "bn2.running_var"}
    assert summary["layers"] == 2 and summary["mean_shift"] > 0


def _washed_out(x: np.ndarray) -> np.ndarray:
    """Another camera: brighter, a quarter of the contrast."""
    return (x * 0.25 + 180).astype(np.uint8)


def test_a_washed_out_domain_is_recovered_without_labels(trained):
    net, source = trained
    x, y = _blobs(256, 1)
    assert _accuracy(net, x, y) > 0.95
    before = _accuracy(net, _washed_out(x), y)
    model = _copy(net)
    adapt_batchnorm(model, source, _washed_out(_blobs(256, 2)[0]), SPEC)  # unlabelled images of that domain
    after = _accuracy(model, _washed_out(x), y)
    assert before < 0.7 and after > 0.95, (before, after)
    assert _accuracy(net, x, y) > 0.95  # the model adapted was a copy


def test_the_training_domain_itself_leaves_the_model_as_it_was():
    """Statistics kept from another domain (ImageNet's, batch norm frozen while fine-tuning): the
    mapping is relative to the train images, so adapting to the train images is no change."""
    torch.manual_seed(1)
    model = Net().eval()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.2, 3)
    x, _ = _blobs(128, 3)
    with torch.no_grad():
        before = model(torch.from_numpy(SPEC.normalize(x)))
    adapt_batchnorm(model, x, x, SPEC)
    with torch.no_grad():
        after = model(torch.from_numpy(SPEC.normalize(x)))
    assert torch.allclose(before, after, atol=1e-4)


def test_a_strength_under_one_moves_the_statistics_that_share_of_the_way(trained):
    net, source = trained
    dark = (source * 0.4).astype(np.uint8)
    full, half, default = _copy(net), _copy(net), _copy(net)
    assert adapt_batchnorm(full, source, dark, SPEC, strength=1.0)["strength"] == 1.0
    summary = adapt_batchnorm(half, source, dark, SPEC, strength=0.5)
    adapt_batchnorm(default, source, dark, SPEC)
    assert summary["strength"] == 0.5
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), default.state_dict().values()))
    # every layer half-way between the trained and the fully adapted statistics: the mean
    # linearly, the spread geometrically
    std = lambda bn: (bn.running_var + bn.eps).sqrt()  # noqa: E731
    for name in ("bn", "bn2"):
        trained_bn, full_bn, half_bn = (getattr(m, name) for m in (net, full, half))
        assert not torch.allclose(full_bn.running_mean, trained_bn.running_mean, atol=1e-3)
        assert torch.allclose(half_bn.running_mean, (trained_bn.running_mean + full_bn.running_mean) / 2, atol=1e-5)
        assert torch.allclose(std(half_bn), (std(trained_bn) * std(full_bn)).sqrt(), rtol=1e-4)
    assert summary["mean_shift"] < adapt_batchnorm(_copy(net), source, dark, SPEC)["mean_shift"]


@pytest.mark.parametrize("strength", [0, -0.5, 1.5])
def test_a_strength_outside_zero_to_one_is_refused_with_the_range(write_config, strength):
    from edgepipe.core.errors import ConfigError
    from edgepipe.pipeline.config import load_config

    cfg = write_config({"name": "x", "dataset": {"source": "imagefolder", "root": "data"},
                        "adapt": {"images": "field", "strength": strength}})
    with pytest.raises(ConfigError, match="adapt.strength"):
        load_config(cfg)


def test_a_model_without_batchnorm_is_refused():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).eval()
    x, _ = _blobs(8, 0)
    with pytest.raises(DataError, match="no batch-norm layer"):
        adapt_batchnorm(model, x, x, SPEC)


def test_too_few_field_images_stop_the_build_with_the_fix(tmp_path):
    config = write_tiny_project(tmp_path)
    for i in range(5):
        write_image(tmp_path / "field" / f"{i}.png", size=(32, 32), seed=i)
    result = CliRunner().invoke(cli, ["build", str(config), "--adapt", str(tmp_path / "field")])
    assert result.exit_code == 2, result.output
    assert "holds 5 readable image(s)" in result.output and "at least 32" in result.output
    stages = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]
    assert stages["finetune"]["status"] == "complete" and "adapt" not in stages  # nothing half-done recorded


def test_adapt_inside_the_output_folder_is_refused(tmp_path):
    config = write_tiny_project(tmp_path)
    result = CliRunner().invoke(cli, ["build", str(config), "--adapt", str(tmp_path)])
    assert result.exit_code == 2 and "inside adapt.images" in result.output, result.output


def test_field_images_inside_the_dataset_folder_are_refused(tmp_path):
    """They would be read as one more class of the dataset: refused before any stage, with the fix."""
    config = write_tiny_project(tmp_path)
    result = CliRunner().invoke(cli, ["build", str(config), "--adapt", str(tmp_path / "data" / "horizontal")])
    assert result.exit_code == 2 and "is inside dataset.root" in result.output, result.output
    assert "move adapt.images outside" in result.output and not (tmp_path / "out").exists()


def test_a_build_with_adapt_exports_the_adapted_model_and_says_so(project):
    """End to end on the tiny project: --adapt reruns from adapt on (not the fine-tune), the ONNX is
    the adapted model's, the report says on how many images; the same run again is up to date; a
    single-stage command without the option refuses with the fix; dropping it builds the plain model."""
    from edgepipe.core.files import sha256_file
    from edgepipe.pipeline.torch_model import read_checkpoint
    from tests.pipeline.conftest import build, manifest, ran

    root, configure = project
    for i in range(40):
        write_image(root / "field" / f"{i}.png", size=(32, 32), seed=500 + i)
    onnx = root / "out" / "export" / "model.onnx"
    plain_onnx = sha256_file(onnx)
    result = build(root / "build.yaml", "--adapt", root / "field")
    assert result.exit_code == 0, result.output
    assert ran(root) == ["export", "quantize", "verify", "report"]
    assert "adapt" in manifest(root)["last_run"]["ran"]
    report = json.loads((root / "out" / "report.json").read_text())
    assert report["adapt"]["images"] == 40 and report["adapt"]["layers"] > 0
    assert sha256_file(onnx) != plain_onnx
    tuned, adapted = (read_checkpoint(root / "out" / d / "model.pt")["state_dict"] for d in ("finetune", "adapt"))
    changed = {k for k in tuned if not torch.equal(tuned[k], adapted[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)

    _assert_field_reference(root / "dist" / "tiny" / "onnxruntime-int8", root / "field")

    again = build(root / "build.yaml", "--adapt", root / "field")
    assert again.exit_code == 0 and manifest(root)["last_run"]["ran"] == [], again.output
    alone = CliRunner().invoke(cli, ["verify", str(root / "build.yaml")])
    assert alone.exit_code == 2 and "lasts one run" in alone.output, alone.output

    # a strength (and a limit) in the config's adapt section survive --adapt and are part of the key
    configure(adapt={"images": str(root / "field"), "strength": 0.5, "limit": 32})
    half = build(root / "build.yaml", "--adapt", root / "field")
    assert half.exit_code == 0 and "adapt" in manifest(root)["last_run"]["ran"], half.output
    half_report = json.loads((root / "out" / "report.json").read_text())["adapt"]
    assert half_report["strength"] == 0.5 and half_report["images"] == 32  # a seeded 32 of the 40
    assert "at strength 0.5" in (root / "out" / "report.md").read_text()
    # adapted part of the way, the bundle serves the training domain too: its monitor takes both
    from edgepipe.runtime.bundle import load_bundle
    from edgepipe.runtime.reference import load_reference

    half_ref = load_reference(load_bundle(root / "dist" / "tiny" / "onnxruntime-int8"))
    assert half_ref.schema_ == "edgepipe-reference/3" and half_ref.domains == (("val", "test"), ("field",))
    assert half_ref.splits["field"].images == 32  # the same selection the adapt stage read
    halfway = read_checkpoint(root / "out" / "adapt" / "model.pt")["state_dict"]
    assert any(not torch.equal(adapted[k], halfway[k]) for k in changed)
    configure()

    plain = build(root / "build.yaml")
    assert plain.exit_code == 0, plain.output
    assert "finetune" not in manifest(root)["last_run"]["ran"]
    assert json.loads((root / "out" / "report.json").read_text()).get("adapt") is None
    plain_ref = json.loads((root / "dist" / "tiny" / "onnxruntime-int8" / "reference.json").read_text())
    assert plain_ref["schema"] == "edgepipe-reference/1" and set(plain_ref["splits"]) == {"val", "test"}


def _assert_field_reference(bundle_dir, field_dir):
    """The adapted bundle's drift reference holds the field images it was adapted to: their image
    statistics, and the bundle's own model's confidences on them; its monitor compares with them."""
    from edgepipe.core.image_stats import DECIMALS, STATS, image_stats
    from edgepipe.core.preprocess import decode_image, read_image_bytes
    from edgepipe.runtime.bundle import load_bundle
    from edgepipe.runtime.predictor import Predictor
    from edgepipe.runtime.reference import load_reference

    b = load_bundle(bundle_dir)
    ref = load_reference(b)
    field = ref.splits["field"]
    assert ref.schema_ == "edgepipe-reference/2" and ref.domains == (("field",),) and field.labels is None
    assert field.images == 40 and ref.splits["val"].labels is not None
    pixels = np.stack([b.spec.to_rgb8(decode_image(read_image_bytes(f))) for f in sorted(field_dir.glob("*.png"))])
    stats = image_stats(pixels)
    for i, s in enumerate(STATS):
        assert field.signals[s] == pytest.approx(np.round(stats[:, i].astype(np.float64), DECIMALS[s]).tolist(), abs=1e-9), s
    with Predictor(b) as p:
        confidence = [max(x.probabilities.values()) for x in p.predict_pixels(pixels)]
    assert field.signals["confidence"] == pytest.approx(confidence, abs=2e-6)


def test_the_default_strength_leaves_the_keys_of_adapted_builds_as_they_were(tmp_path, write_config):
    from edgepipe.pipeline.field_images import images_digest
    from edgepipe.pipeline.config import AdaptConfig, load_config

    assert "strength" not in images_digest(AdaptConfig(images=tmp_path))  # a key from before strength existed
    assert images_digest(AdaptConfig(images=tmp_path, strength=0.5))["strength"] == 0.5
    base = {"name": "x", "dataset": {"source": "imagefolder", "root": "data"}}
    default = load_config(write_config({**base, "adapt": {"images": "field"}}, "a.yaml"))
    half = load_config(write_config({**base, "adapt": {"images": "field", "strength": 0.5}}, "b.yaml"))
    dump = default.model_dump(mode="json", exclude={"tracking"})
    del dump["adapt"]["strength"]
    assert default.sha256() == hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()
    assert half.sha256() != default.sha256()


def test_a_strength_beyond_one_is_refused_by_the_function_too(trained):
    net, source = trained
    with pytest.raises(ValueError, match="strength"):
        adapt_batchnorm(_copy(net), source, source, SPEC, strength=1.5)
