"""What edgepipe knows of one backend, declared in its folder's __init__.py.

A backend folder (Polygraphy's layout) holds its config section (config.py), its builder (the
build side: quantizers, compilers; builder.py) and its device side (runner + what the field unit
needs; runner.py). Each part is named here as "module:attribute" and imported only when used, so
reading the registry imports no backend, and a field unit never imports a builder or a config.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


def load_attr(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Backend:
    name: str  # the `targets: - name:` of a config, and the first half of an artifact's name
    config: str  # its pydantic config section, a TargetSection (build side)
    builder: str  # its Target: builds artifacts from the exported ONNX (build side)
    device: str  # its Device: what the field unit needs installed, and a runner for a bundle
    build_tools: tuple[str, ...] = ()  # packages whose version changes what the builder writes
    default: bool = True  # part of the `targets:` list a config gets when it names none

    def config_class(self):
        return load_attr(self.config)

    def target(self):
        return load_attr(self.builder)()

    def device_side(self):
        return load_attr(self.device)()
