"""Deployment targets, one folder per backend (config section, builder, runner; see backend.py).

REGISTRY is the one list of backends: the config's `targets:` sections, the quantize / verify /
bundle stages, the manifest's tool list and the Predictor all read it. Adding a backend is one
new folder and one line here. Nothing is imported until a backend is used.
"""

from __future__ import annotations

import importlib

from edgepipe.targets.backend import Backend
from edgepipe.targets.base import Artifact, Device, Runner

# name -> the package whose __init__ declares BACKEND
REGISTRY: dict[str, str] = {
    "onnxruntime": "edgepipe.targets.onnxruntime",
    "openvino": "edgepipe.targets.openvino",
    "tensorrt": "edgepipe.targets.tensorrt",
}


def backend(name: str) -> Backend:
    """The registered backend `name`; KeyError if there is none."""
    return importlib.import_module(REGISTRY[name]).BACKEND


def backends() -> list[Backend]:
    return [backend(name) for name in REGISTRY]


def get_target(name: str):
    """The build side of backend `name` (a targets.builder.Target)."""
    return backend(name).target()


def get_device(name: str) -> Device:
    """The device side of backend `name`: its runtime package and runners."""
    return backend(name).device_side()


def build_tools() -> tuple[str, ...]:
    """Every backend's build packages, in registry order, each once."""
    return tuple(dict.fromkeys(t for b in backends() for t in b.build_tools))


def runtime_packages() -> tuple[str, ...]:
    return tuple(dict.fromkeys(get_device(b.name).package for b in backends()))


__all__ = ["Artifact", "Backend", "Device", "Runner", "REGISTRY", "backend", "backends", "build_tools",
           "get_device", "get_target", "runtime_packages"]
