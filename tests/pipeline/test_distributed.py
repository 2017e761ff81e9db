"""The fine-tune under torchrun (pipeline/distributed.py) and its epoch snapshots (snapshot.py).

The 2-process test starts real processes through torch's own launcher (`python -m
torch.distributed.run`, i.e. torchrun) with gloo on this CPU. Stated tolerance: at the same
global batch the two runs differ only by the order in which float sums are taken, so every
weight of the checkpoint and every epoch's loss agree within 1e-5, and val accuracy is equal."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import edgepipe.pipeline.finetune as finetune
from edgepipe.cli import cli
from edgepipe.pipeline.torch_model import load_checkpoint
from tests.conftest import write_tiny_project

REPO = Path(__file__).parents[2]
TOLERANCE = 1e-5
# warm-up 0: every epoch's weights can be the checkpoint's; batch 7 over 12 train images gives
# global batches of 7 and 5, split 4 + 3 and 3 + 2 between two ranks (uneven slices on purpose)
FULL_FINETUNE = {"warmup_epochs": 0, "epochs": 3, "batch_size": 7, "patience": 100, "augment": {"flips": True}}


def _weights(root: Path) -> dict:
    return torch.load(root / "out" / "finetune" / "model.pt", weights_only=True)["state_dict"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _json(root: Path, name: str):
    return json.loads((root / "out" / "finetune" / name).read_text())


def test_two_torchrun_processes_match_one_process_at_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        write_tiny_project(root, finetune=FULL_FINETUNE)
    result = CliRunner().invoke(cli, ["finetune", str(one / "build.yaml")])
    assert result.exit_code == 0, result.output
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "edgepipe", "finetune", "build.yaml"],
                          cwd=two, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("x 2 processes") == 1  # rank 1 prints nothing

    metrics_one, metrics_two = _json(one, "metrics.json"), _json(two, "metrics.json")
    assert metrics_two["processes"] == 2 and metrics_one["processes"] == 1
    assert metrics_two["best_epoch"] >= 1  # the checkpoint holds fine-tuned weights, not the start
    assert metrics_two["val_accuracy"] == metrics_one["val_accuracy"]
    assert metrics_two["test_accuracy"] == metrics_one["test_accuracy"]
    assert _max_diff(_weights(one), _weights(two)) <= TOLERANCE
    curve_one, curve_two = _json(one, "curve.json"), _json(two, "curve.json")
    assert len(curve_two) == 3
    for a, b in zip(curve_one, curve_two):
        assert a["val_accuracy"] == b["val_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=TOLERANCE)
    load_checkpoint(two / "out" / "finetune" / "model.pt")  # the 1-process checkpoint format
    # one writer: the same files as the 1-process run, recorded once, the stage complete
    listing = lambda root: sorted(p.relative_to(root / "out").as_posix() for p in (root / "out").rglob("*")  # noqa: E731
                                  if p.is_file() and p.name != ".edgepipe.lock")
    assert listing(one) == listing(two)
    manifest = json.loads((two / "out" / "manifest.json").read_text())
    assert manifest["stages"]["finetune"]["status"] == "complete"
    # the build continues from the distributed checkpoint on one process
    build = CliRunner().invoke(cli, ["build", str(two / "build.yaml")])
    assert build.exit_code == 0, build.output
    assert "finetune: up to date" in build.output


class Interrupt:
    """torch_logits that raises KeyboardInterrupt on its n-th call (a build stopped by hand)."""

    def __init__(self, n: int):
        self.n, self.calls, self.real = n, 0, finetune.torch_logits

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_a_killed_finetune_resumes_after_its_last_epoch_with_the_same_result(tmp_path, monkeypatch):
    settings = {**FULL_FINETUNE, "epochs": 4}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for root in (straight, killed):
        write_tiny_project(root, finetune=settings)
    assert CliRunner().invoke(cli, ["finetune", str(straight / "build.yaml")]).exit_code == 0

    monkeypatch.setattr(finetune, "torch_logits", Interrupt(3))  # during epoch 3's validation
    stopped = CliRunner().invoke(cli, ["build", str(killed / "build.yaml")])
    assert stopped.exit_code == 130
    snapshot = killed / "out" / "finetune" / "snapshot.pt"
    assert snapshot.is_file() and not (killed / "out" / "finetune" / "model.pt").exists()
    monkeypatch.undo()

    resumed = CliRunner().invoke(cli, ["build", str(killed / "build.yaml")])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming the fine-tune after epoch 2 of 4" in resumed.output
    assert not snapshot.exists()  # spent once the checkpoint is written
    metrics = _json(killed, "metrics.json")
    assert metrics["resumed_after_epoch"] == 2 and metrics["epochs_run"] == 4
    curves = [[(c["epoch"], c["val_accuracy"], round(c["train_loss"], 6)) for c in _json(root, "curve.json")]
              for root in (straight, killed)]
    assert curves[0] == curves[1]
    assert _max_diff(_weights(straight), _weights(killed)) <= 1e-6


def test_a_snapshot_of_other_inputs_is_not_resumed(tmp_path, monkeypatch):
    root = tmp_path / "p"
    write_tiny_project(root, finetune=FULL_FINETUNE)
    monkeypatch.setattr(finetune, "torch_logits", Interrupt(2))
    assert CliRunner().invoke(cli, ["finetune", str(root / "build.yaml")]).exit_code == 130
    monkeypatch.undo()
    write_tiny_project(root, finetune={**FULL_FINETUNE, "head_lr": 0.002})  # another config: another stage key
    result = CliRunner().invoke(cli, ["finetune", str(root / "build.yaml")])
    assert result.exit_code == 0, result.output
    assert "written for other inputs; training from the start" in result.output
    assert _json(root, "metrics.json")["resumed_after_epoch"] is None


@pytest.mark.parametrize("command", ["build", "export", "cv"])
def test_under_torchrun_only_the_finetune_runs(tmp_path, monkeypatch, command):
    config = write_tiny_project(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(cli, [command, str(config)])
    assert result.exit_code == 2 and "torchrun" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 2}, "finetune.batch_size 2 is smaller than the 4 torchrun processes"),
    ({"batchnorm": "train", "device": "cpu"}, "finetune.batchnorm: train under torchrun on CPUs"),
])
def test_what_a_distributed_finetune_cannot_do_is_refused_before_any_work(tmp_path, monkeypatch, settings, message):
    config = write_tiny_project(tmp_path, finetune=settings)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(cli, ["finetune", str(config)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out" / "finetune" / "model.pt").exists()


def test_a_snapshot_of_another_device_profile_is_not_resumed(tmp_path, monkeypatch):
    """`device: auto` is CPU here and CUDA elsewhere: same stage key, other recipe (parameter
    groups, budget). A snapshot is resumed only by the recipe that wrote it."""
    root = tmp_path / "p"
    write_tiny_project(root, finetune=FULL_FINETUNE)
    monkeypatch.setattr(finetune, "torch_logits", Interrupt(2))
    assert CliRunner().invoke(cli, ["finetune", str(root / "build.yaml")]).exit_code == 130
    monkeypatch.undo()
    cpu = finetune.PROFILES["cpu"]
    monkeypatch.setitem(finetune.PROFILES, "cpu", {**cpu, "backbone_lr": cpu["backbone_lr"] * 2})
    result = CliRunner().invoke(cli, ["finetune", str(root / "build.yaml")])
    assert result.exit_code == 0, result.output
    assert "written for other inputs; training from the start" in result.output


def test_a_resumed_run_keeps_to_the_budget_that_was_left(tmp_path, monkeypatch):
    """The clock ticks 10 s a reading. First run: deadline 70, epoch 1 ends at 40 (an epoch takes
    10 s: 3 epochs in all, 30 s left) and the run dies in epoch 2. The resumed run has those 30 s,
    from its own start (10 -> deadline 40): epochs 2 and 3 fit (ending 30 and 40), a fourth would not."""
    from tests.pipeline.test_finetune_budget import TickingClock

    config = write_tiny_project(tmp_path, finetune={"warmup_epochs": 1, "epochs": 20, "budget_minutes": 1,
                                                   "patience": 100, "batch_size": 32})
    monkeypatch.setattr(finetune, "_probe_step_seconds", lambda *args: 1.0)
    monkeypatch.setattr(finetune, "_clock", TickingClock(10))
    monkeypatch.setattr(finetune, "torch_logits", Interrupt(2))  # epoch 2's validation
    first = CliRunner().invoke(cli, ["finetune", str(config)])
    assert first.exit_code == 130 and "3 epoch(s) in all, not 20" in first.output
    monkeypatch.setattr(finetune, "torch_logits", Interrupt(0))  # never interrupts
    monkeypatch.setattr(finetune, "_clock", TickingClock(10))
    resumed = CliRunner().invoke(cli, ["finetune", str(config)])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming the fine-tune after epoch 1 of 3" in resumed.output and "30 s of the budget left" in resumed.output
    metrics = _json(tmp_path, "metrics.json")
    assert (metrics["resumed_after_epoch"], metrics["epochs_run"], metrics["planned_epochs"]) == (1, 3, 3)
    assert metrics["stopped"] == "planned"
    assert [c["epoch"] for c in _json(tmp_path, "curve.json") if c["phase"] == "finetune"] == [1, 2, 3]
    assert [c["phase"] for c in _json(tmp_path, "curve.json")][0] == "warmup"  # the warm-up curve is kept
