"""The layers, enforced on the source: every import of every module (lazy ones inside functions
included) points down, so no package cycle can form.

    cli (edgepipe/)      the command line and the public API
    pipeline             build stages, config, manifest (torch, timm, onnx)
    runtime              bundle loading, Predictor, bench/check: what a field unit runs
    targets              backend builders and runners
    calibration          calibration sets and their adapters
    core                 errors, preprocessing, hashing + atomic writes, metrics, console
"""

import ast
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).parents[1]
LAYERS = ("core", "calibration", "targets", "runtime", "pipeline", "cli")  # bottom to top


def package_dirs() -> dict[str, Path]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {pkg: REPO / folder for pkg, folder in project["tool"]["setuptools"]["package-dir"].items()}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "relative-import":
        return "relative"  # above every layer: always reported
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "cli"  # edgepipe, edgepipe.cli


def modules() -> dict[str, Path]:
    """Every module of every package, sub-packages (the backend folders) included."""
    out = {}
    for pkg, folder in package_dirs().items():
        for f in sorted(folder.rglob("*.py")):
            parts = f.relative_to(folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            name = ".".join((pkg, *parts[:-1], *([] if parts[-1] == "__init__" else [parts[-1]])))
            out[name] = f
    return out


def edgepipe_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of edgepipe's own code, at any depth of the file. A relative
    import is reported as the module `edgepipe.<relative>`, which no layer allows: use absolute ones."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, f"edgepipe.relative-import.{node.module or ''}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m == "edgepipe" or m.startswith("edgepipe.")]


def violations(module: str, source: str) -> list[str]:
    here = LAYERS.index(layer(module))
    return [f"{module}:{line} imports {target} ({layer(target)} is above {layer(module)})"
            for line, target in edgepipe_imports(source)
            if layer(target) == "relative" or LAYERS.index(layer(target)) > here]


def test_every_module_imports_only_its_own_layer_or_below():
    found = modules()
    assert {"edgepipe.core.errors", "edgepipe.runtime.predictor", "edgepipe.pipeline.build", "edgepipe.cli",
            "edgepipe.targets.tensorrt.runner", "edgepipe.targets.onnxruntime"} <= set(found)
    bad = [v for m, path in found.items() for v in violations(m, path.read_text())]
    assert not bad, "\n".join(bad)


def test_no_module_imports_the_old_top_level_names():
    """`pipeline`, `targets`, `calibration`, `runtime` are folders, not importable packages."""
    old = ("pipeline", "targets", "calibration", "runtime", "core")
    bad = []
    for m, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{m}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in old]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, line", [
    ("edgepipe.core.preprocess", "from edgepipe.runtime.bundle import load_bundle"),
    ("edgepipe.runtime.predictor", "def f():\n    from edgepipe.pipeline.config import load_config"),  # a lazy import
    ("edgepipe.targets.base", "import edgepipe.pipeline.manifest"),
    ("edgepipe.calibration.set", "from edgepipe.targets import get_target"),
    ("edgepipe.runtime.bundle", "from ..pipeline import config"),  # relative: hides the layer
    ("edgepipe.targets.onnxruntime.runner", "from edgepipe.pipeline.config import BuildConfig"),  # in a backend folder
    ("edgepipe.targets.tensorrt", "from edgepipe.runtime.bundle import load_bundle"),
])
def test_the_checker_catches_an_import_against_the_direction(module, line):
    source = modules()[module].read_text() + "\n" + line + "\n"
    assert violations(module, source), f"{line!r} in {module} was not caught"


# The device side of targets/: what a field unit imports to run a bundle.
DEVICE_SIDE = ("edgepipe.targets", "edgepipe.targets.backend", "edgepipe.targets.base")
BUILD_SIDE = ("edgepipe.calibration", "edgepipe.targets.builder", "edgepipe.targets.section")


def device_side_violations(module: str, source: str) -> list[str]:
    return [f"{module}:{line} imports {target}, a build-side module" for line, target in edgepipe_imports(source)
            if target.startswith(BUILD_SIDE) or target.endswith((".builder", ".config"))]


def _device_modules() -> list[str]:
    found = modules()
    backends = {m for m in found if m.startswith("edgepipe.targets.") and m.count(".") == 2
                and found[m].name == "__init__.py"}
    return [m for m in found if m in DEVICE_SIDE or m in backends or (m.endswith(".runner") and m.startswith("edgepipe.targets."))]


def test_the_device_side_of_every_backend_imports_no_builder_config_or_calibration():
    device = _device_modules()
    assert {"edgepipe.targets.onnxruntime.runner", "edgepipe.targets.tensorrt.runner", "edgepipe.targets.openvino"} <= set(device)
    bad = [v for m in device for v in device_side_violations(m, modules()[m].read_text())]
    assert not bad, "\n".join(bad)


def test_the_device_side_checker_catches_a_builder_import():
    source = modules()["edgepipe.targets.openvino.runner"].read_text()
    assert device_side_violations("x", source + "\nfrom edgepipe.targets.openvino.builder import NncfQuantPreset\n")
    assert device_side_violations("x", source + "\nimport edgepipe.calibration.set\n")
