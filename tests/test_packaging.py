"""The wheel installs one import namespace, `edgepipe`, and the console script."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).parents[1]


def test_the_wheel_top_level_is_edgepipe_alone(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("edgepipe-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"edgepipe"}, top
    for module in ("edgepipe/core/errors.py", "edgepipe/runtime/predictor.py", "edgepipe/pipeline/build.py",
                   "edgepipe/targets/base.py", "edgepipe/calibration/set.py", "edgepipe/cli.py"):
        assert module in names
    assert not [n for n in names if n.startswith("edgepipe/") and "/tests/" in n]
    # every module of the source tree, each backend folder included (a new one must be listed in
    # pyproject's packages): what is missing here would be an ImportError on a user's machine
    sources = {f"edgepipe/{p.relative_to(REPO / folder).as_posix()}" if folder == "edgepipe"
               else f"edgepipe/{p.relative_to(REPO).as_posix()}"
               for folder in ("edgepipe", "core", "runtime", "targets", "calibration", "pipeline")
               for p in (REPO / folder).rglob("*.py")}
    assert not sources - set(names), sorted(sources - set(names))
    assert "edgepipe/targets/tensorrt/trt_engine.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edgepipe = edgepipe.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
