"""`edgepipe engine BUNDLE`: compile a bundle for this device, for backends that need it (TensorRT:
a plan is tied to its TensorRT version and GPU, so it is built where it runs).

What is built and where it goes is the backend's (targets/<backend>/runner.py, Device.build_on_device);
here: the bundle is checked first (a changed or untrusted bundle is refused before minutes are spent
on it), and a backend missing on this machine is a skip (exit 4), not an error.
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.core.errors import BundleError, EngineSkipped
from edgepipe.runtime.bundle import load_bundle
from edgepipe.targets import get_device


def build_bundle_engine(path: str | Path, max_batch: int = 8, workspace_mb: int = 1024,
                        dla_core: int | None = None, trusted_keys=None) -> dict:
    bundle = load_bundle(path, trusted_keys=trusted_keys)
    device = get_device(bundle.target)
    if device.builds_on_device is None:
        raise BundleError(f"{bundle.name} is a {bundle.target} bundle: it runs as it is, with no engine to build",
                          "pass a TensorRT bundle (dist/<name>/tensorrt-<precision>)")
    try:
        return device.build_on_device(bundle.root, bundle.model_path, bundle.precision, max_batch=max_batch,
                                      workspace_mb=workspace_mb, dla_core=dla_core)
    except ImportError as e:
        raise EngineSkipped(f"{e.name or device.package} is not installed here: {device.builds_on_device} build skipped",
                            f"run `edgepipe engine` on the device it is for: {device.install}") from None
