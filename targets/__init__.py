"""Deployment targets, one module per backend. The registry maps a name to its module and class;
modules are imported only when a target is used, and backends only when a target builds or runs."""

from __future__ import annotations

import importlib

from edgepipe.targets.base import Artifact, Runner, Target

# name -> (module, class). Each target's precisions and options are typed in pipeline/config.py.
REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("edgepipe.targets.onnxruntime", "OnnxRuntimeTarget"),
    "openvino": ("edgepipe.targets.openvino", "OpenVinoTarget"),
    "tensorrt": ("edgepipe.targets.tensorrt", "TensorRtTarget"),
}


def get_target(name: str) -> Target:
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Artifact", "Runner", "Target", "REGISTRY", "get_target"]
