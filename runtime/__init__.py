"""edgepipe on-device runtime: load a deploy bundle, check it, run it. No torch, timm or nncf.

Imports stay lazy here so `import edgepipe.runtime` costs nothing; the backend (onnxruntime, openvino,
tensorrt) is imported only when a bundle that needs it is loaded.
"""

from __future__ import annotations

__all__ = ["Prediction", "Predictor", "load_bundle"]


def __getattr__(name: str):
    if name in ("Predictor", "Prediction"):
        from edgepipe.runtime import predictor

        return getattr(predictor, name)
    if name == "load_bundle":
        from edgepipe.runtime.bundle import load_bundle

        return load_bundle
    raise AttributeError(name)
