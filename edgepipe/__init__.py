"""edgepipe: build, quantize, compile and verify compact image classifiers for edge targets.

The one import namespace the wheel installs. Its sub-packages are the repository's top-level folders
(pyproject.toml maps them): `edgepipe.core`, `edgepipe.runtime`, `edgepipe.targets`,
`edgepipe.calibration`, `edgepipe.pipeline`, and `edgepipe.cli` on top.

Public API, imported lazily so that `import edgepipe` on a field unit pulls in no build tools:
    from edgepipe import Predictor, load_config, build
"""

from __future__ import annotations

from edgepipe.core import __version__

__all__ = ["Prediction", "Predictor", "__version__", "build", "load_bundle", "load_config"]


def build(config, *, force_from: str | None = None, junit=None, sign_key=None) -> int:
    """Run every stage of the build config (a path) that is not up to date, as `edgepipe build`
    does; returns the exit code (0, or 3 when a gate fails). Bad input raises EdgepipeError."""
    from pathlib import Path

    from edgepipe.pipeline.build import run_stages
    from edgepipe.pipeline.config import load_config as _load
    from edgepipe.pipeline.stages import STAGES

    return run_stages(_load(config), STAGES, None if junit is None else Path(junit), incremental=True,
                      force_from=force_from, sign_key=None if sign_key is None else Path(sign_key))


def __getattr__(name: str):
    if name in ("Predictor", "Prediction"):
        from edgepipe.runtime import predictor

        return getattr(predictor, name)
    if name == "load_bundle":
        from edgepipe.runtime.bundle import load_bundle

        return load_bundle
    if name == "load_config":
        from edgepipe.pipeline.config import load_config

        return load_config
    raise AttributeError(name)
