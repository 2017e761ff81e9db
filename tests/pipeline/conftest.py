"""A tiny build killed with SIGKILL at four stages and resumed: the evidence for test_resume.py,
and, once resumed, the finished build that test_incremental.py and the guard tests start from
(one build for all: an export alone costs ~15 s)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import cli
from edgepipe.core.files import sha256_file
from tests.conftest import write_tiny_project

REPO = Path(__file__).parents[2]
# (stage the build dies in, where): see tests/pipeline/sigkill_build.py
KILLS = [
    ("finetune", "finetune/model.pt"),  # the checkpoint is written to its temp name, never renamed
    ("export", "manifest:export:running"),  # killed while tracing the model: nothing written yet
    ("quantize", "targets/onnxruntime-int8/model.onnx"),  # the fp32 artifact is done, int8 is not
    ("verify", "manifest:verify:recorded"),  # results.json written and recorded, `complete` never saved
]


def snapshot(out: Path) -> dict:
    """The manifest, whether each complete stage's outputs still hash as recorded, and every file."""
    manifest = json.loads((out / "manifest.json").read_text())
    intact = {stage: all((out / o["path"]).is_file() and sha256_file(out / o["path"]) == o["sha256"]
                         for o in entry.get("outputs", {}).values())
              for stage, entry in manifest["stages"].items() if entry.get("status") == "complete"}
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {"manifest": manifest, "intact": intact, "files": files}


@pytest.fixture(scope="session")
def resumed_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    config = write_tiny_project(root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = []
    for stage, where in KILLS:
        proc = subprocess.run([sys.executable, "-m", "tests.pipeline.sigkill_build", str(config), where],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        runs.append({"stage": stage, "where": where, "returncode": proc.returncode, "stderr": proc.stderr,
                     **snapshot(root / "out")})
        if proc.returncode != -signal.SIGKILL:
            break  # test_resume reports it; the runs after it would only repeat the failure
    final = CliRunner().invoke(cli, ["build", str(config)])
    return {"root": root, "config": config, "runs": runs, "final": final, **snapshot(root / "out")}


CORE = ("finetune", "export", "quantize", "verify", "report")


def build(cfg, *args):
    return CliRunner().invoke(cli, ["build", str(cfg), *map(str, args)])


def manifest(root):
    return json.loads((root / "out" / "manifest.json").read_text())


def ran(root):
    return [s for s in manifest(root)["last_run"]["ran"] if s in CORE]


@pytest.fixture(scope="module")
def base(resumed_build, tmp_path_factory):
    assert resumed_build["final"].exit_code == 0, resumed_build["final"].output
    root = tmp_path_factory.mktemp("incremental") / "p"
    shutil.copytree(resumed_build["root"], root)
    result = build(root / "build.yaml")
    assert result.exit_code == 0, result.output
    # Moved to another folder: only what records absolute paths (the report's config hash) reruns.
    assert ran(root) == ["report"]
    return root


@pytest.fixture
def project(base, tmp_path):
    """A private copy of the built project (data, config, outputs) to change."""
    root = tmp_path / "p"
    shutil.copytree(base, root)

    def configure(**changes):
        return write_tiny_project(root, **changes)

    return root, configure
