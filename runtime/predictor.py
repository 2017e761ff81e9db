"""Predictor: run a deploy bundle on images. numpy, PIL and the bundle's own backend; no torch.

The runner is the one the build's verify stage measured (the backend's Device.runner with the same
settings), and preprocessing is edgepipe.core.preprocess with the spec stored in the bundle, so a
field unit computes what the build report measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgepipe.core.errors import BackendMissing, BundleError, ImageError
from edgepipe.core.preprocess import DECODE_ERRORS, UnreadableFile, decode_image, from_array, read_image_bytes
from edgepipe.runtime.bundle import Bundle, load_bundle
from edgepipe.runtime.telemetry import TelemetryLog
from edgepipe.targets.base import Artifact, Runner

ImageLike = str | Path | Image.Image | np.ndarray
T = TypeVar("T")

@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probabilities: dict[str, float]
    latency_ms: float  # model inference time of the batch this image was in (not preprocessing)
    batch: int
    source: str | None = None  # the path, when the input was one

    def to_dict(self) -> dict:
        d = {"path": self.source} if self.source is not None else {}
        return d | {"label": self.label, "index": self.index, "probabilities": self.probabilities,
                    "latency_ms": round(self.latency_ms, 3), "batch": self.batch}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _require(load: Callable[[], T], target: str, fix: str | None) -> T:
    """load(), with an ImportError (a backend missing here) turned into BackendMissing naming it."""
    try:
        return load()
    except ImportError as e:
        raise BackendMissing(f"this {target} bundle needs {e.name or 'its backend'}, which is not installed here",
                             fix or f"pip install {e.name}") from None


def make_runner(bundle: Bundle, threads: int, proxy: bool = False) -> Runner:
    """The runner the build's verify stage used for this artifact (not yet activated): the device
    side of the bundle's backend (targets/<backend>/runner.py)."""
    from edgepipe.targets import REGISTRY, get_device

    target, precision = bundle.target, bundle.precision
    if target not in REGISTRY:
        raise BundleError(f"{bundle.name}: unknown target {target!r}", "rebuild the bundle with this edgepipe")
    device = get_device(target)
    files = [bundle.root / f for f in bundle.meta["files"]]
    if proxy:
        if device.proxy is None or bundle.verified.get("how") != "proxy":
            raise BundleError(f"{bundle.name} has no proxy: --proxy runs a TensorRT int8 bundle's Q/DQ graph on "
                              "ONNX Runtime, as the build verified it", "leave out --proxy")
        artifact = Artifact(target, precision, bundle.model_path, files, proxy=device.proxy)
        return _require(lambda: device.proxy_runner(artifact, threads), target, None)
    model = device.bundle_model(bundle.root, bundle.model_path, bundle.name)
    _require(device.require, target, (bundle.meta.get("runtime") or {}).get("install") or device.install)
    return device.runner(Artifact(target, precision, model, files), threads)


def read_image(path: str | Path) -> Image.Image:
    """A decoded image from a file; ImageError (one line, naming the path) for anything unusable.

    The bytes come from read_image_bytes: a folder, device (/dev/zero), FIFO or socket, or a file
    over MAX_IMAGE_BYTES is refused before it is read, so no input can block or exhaust memory."""
    try:
        return decode_image(read_image_bytes(path))
    except DECODE_ERRORS as e:  # missing, truncated, not an image, not a regular file, too large
        if isinstance(e, UnreadableFile):  # str(): the reason, e.g. "it is a folder"
            why = str(e)
        elif isinstance(e, UnidentifiedImageError):
            why = "not an image format PIL can read"
        elif isinstance(e, OSError) and e.strerror:
            why = e.strerror
        else:
            why = f"{type(e).__name__}: {e}"
        raise ImageError(f"cannot read image {path}: {why}".splitlines()[0]) from None


class Predictor:
    """`Predictor(bundle_dir).predict(image | path | ndarray | list)`.

    The bundle's sha256 values are checked before anything runs. One input gives a Prediction; a
    list (or an NxHxWxC array) gives a list, run in batches of `batch_size`.

    trusted_key: a public key (PEM file path, PEM or raw bytes, Ed25519PublicKey) or a list of
    them (key rotation): the bundle must then be signed by one of them (runtime/signing.py), else
    BundleError. A Bundle passed in is checked again from its folder when trusted_key is given.

    telemetry: a file path (a TelemetryLog with its defaults, closed with the Predictor) or a
    TelemetryLog (the caller closes it): every prediction appends one record (runtime/telemetry.py:
    time, class, confidence, margin and the image's statistics; nothing that identifies the image).
    """

    def __init__(self, bundle: str | Path | Bundle, threads: int | None = None, batch_size: int = 8,
                 proxy: bool = False, trusted_key=None, telemetry: str | Path | TelemetryLog | None = None):
        self.telemetry, self._own_telemetry = None, False
        if isinstance(bundle, Bundle) and trusted_key is None:
            self.bundle = bundle
        else:
            self.bundle = load_bundle(bundle.root if isinstance(bundle, Bundle) else bundle, trusted_keys=trusted_key)
        self.spec, self.labels = self.bundle.spec, self.bundle.labels
        self.threads = threads or self.bundle.method("threads", 2)
        if telemetry is not None:  # opened before the runner: a bad path fails with nothing to release
            self._own_telemetry = not isinstance(telemetry, TelemetryLog)
            self.telemetry = TelemetryLog(telemetry) if self._own_telemetry else telemetry
        try:
            self.runner = make_runner(self.bundle, self.threads, proxy).activate()
        except BaseException:
            self._close_telemetry()
            raise
        self.batch_size = max(1, min(batch_size, self.runner.max_batch or batch_size))
        # One inference at load: a bundle whose model does not fit its labels fails here, not mid-run.
        try:
            width = self.runner.infer(self.spec.normalize(np.zeros((1, self.spec.image_size, self.spec.image_size, 3),
                                                                   np.uint8))).shape[-1]
        except BaseException:
            self.close()  # the session / engine was acquired: release it before the error leaves
            raise
        if width != len(self.labels):
            self.close()
            raise BundleError(f"{self.bundle.name}: the model has {width} outputs for {len(self.labels)} labels",
                              "rebuild the bundle")

    # -- inputs -----------------------------------------------------------------------------------
    def load(self, image: ImageLike) -> np.ndarray:
        """Any supported input -> HxWx3 uint8 at the model's input size (the bundle's preprocessing)."""
        if isinstance(image, (str, Path)):
            image = read_image(image)
        elif isinstance(image, np.ndarray):
            try:
                image = from_array(image)
            except ValueError as e:
                raise ImageError(str(e), "pass uint8 / uint16 pixels or a PIL image") from None
        elif not isinstance(image, Image.Image):
            raise ImageError(f"cannot predict on a {type(image).__name__}",
                             "pass a path, a PIL image or a uint8 / uint16 pixel array")
        return self.spec.to_rgb8(image)

    # -- inference --------------------------------------------------------------------------------
    def logits(self, rgb8: np.ndarray) -> np.ndarray:
        """NxSxSx3 uint8 -> N x classes logits, in batches of batch_size."""
        return self.runner.infer_batched(self.spec.normalize(rgb8), self.batch_size)

    def predict_pixels(self, rgb8: np.ndarray, sources: Sequence[str | None] | None = None) -> list[Prediction]:
        out = []
        for i in range(0, len(rgb8), self.batch_size):
            chunk = rgb8[i:i + self.batch_size]
            probs = softmax(self.runner.infer(self.spec.normalize(chunk)))
            ms = self.runner.inference_time * 1e3
            if self.telemetry is not None:
                self.telemetry.log(self.bundle.meta, self.labels, probs, chunk)
            for j, p in enumerate(probs):
                k = int(p.argmax())
                out.append(Prediction(self.labels[k], k, {c: float(v) for c, v in zip(self.labels, p)}, ms,
                                      len(chunk), None if sources is None else sources[i + j]))
        return out

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> Prediction | list[Prediction]:
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4)
        items = [images] if single else list(images)
        if not items:
            return []
        sources = [str(x) if isinstance(x, (str, Path)) else None for x in items]
        preds = self.predict_pixels(np.stack([self.load(x) for x in items]), sources)
        return preds[0] if single else preds

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.runner.deactivate()
        finally:
            self._close_telemetry()

    def _close_telemetry(self) -> None:
        if self._own_telemetry and self.telemetry is not None:
            self.telemetry.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
