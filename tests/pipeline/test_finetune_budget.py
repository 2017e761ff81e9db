"""The CPU profile trains for a wall-time budget: the epochs follow the epoch time measured on the
machine, a run stops on time, and cheap epochs train longer. The clock is a stand-in that ticks a
fixed number of seconds per reading, so the tests say exactly when the budget runs out."""

import json

import pytest
import torch
from click.testing import CliRunner

import edgepipe.pipeline.finetune as finetune
from edgepipe.cli import cli
from edgepipe.pipeline.config import FinetuneConfig
from edgepipe.pipeline.finetune import BUDGET_CPU, plan_epochs, resolve_recipe
from tests.conftest import write_tiny_project


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


class TickingClock:
    """Each reading is `tick` seconds after the last; `later` gives other steps from the given reading on."""

    def __init__(self, tick: float, later: dict[int, float] | None = None):
        self.now, self.tick, self.later, self.readings = 0.0, tick, later or {}, 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += self.later.get(self.readings, self.tick)
        return self.now


def _finetune(tmp_path, monkeypatch, tick: float, step_s: float, later=None, **settings) -> tuple[dict, str]:
    monkeypatch.setattr(finetune, "_clock", TickingClock(tick, later))
    monkeypatch.setattr(finetune, "_probe_step_seconds", lambda *args: step_s)
    # 12 train images at batch 32: one optimizer step per epoch
    cfg = write_tiny_project(tmp_path, finetune={"warmup_epochs": 1, "patience": 100, "batch_size": 32, **settings})
    result = invoke("finetune", cfg)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    return manifest["stages"]["finetune"]["metrics"], result.output + result.stderr


def test_plan_epochs_fits_the_remaining_time():
    assert plan_epochs(300, 100, 40) == 2  # 5 % is kept for the final evaluation
    assert plan_epochs(300, 1, 40) == 40  # cheap epochs: as many as allowed
    assert plan_epochs(50, 100, 40) == 0
    assert plan_epochs(-5, 100, 40) == 0


def test_the_budget_is_replanned_from_the_first_epoch_and_stops_a_run_on_time(tmp_path, monkeypatch):
    # The probe says ~1.3 s an epoch; on the clock the first epoch takes 10 s, the second 30 s.
    # Readings: 10 (deadline 10 + 60 = 70), 20 (plan: 20 epochs fit), 30 (start), 40 (end of epoch 1:
    # 10 s an epoch, 30 s left -> 3 epochs in all), 70 (end of epoch 2: no time left for a third).
    metrics, log = _finetune(tmp_path, monkeypatch, tick=10, step_s=1.0, later={5: 30}, budget_minutes=1, epochs=20)
    assert "an epoch takes 10 s here: 3 epoch(s) in all, not 20" in log
    assert metrics["planned_epochs"] == 3 and metrics["stopped"] == "budget" and metrics["epochs_run"] == 2
    assert "budget: stopping after epoch 2 of 3" in log


def test_epochs_that_turn_slower_end_the_schedule_sooner_so_the_rate_anneals(tmp_path, monkeypatch):
    # Epoch 1 takes 1 s (20 epochs fit in the 60 s budget); from epoch 2 on an epoch takes 10 s.
    # Readings: 1 (deadline 61), 2 (plan), 3 (start), 4 (end of epoch 1), 14 (end of epoch 2: 47 s
    # left -> 6 epochs in all), then 24, 34, 44, 54: the sixth epoch ends before the deadline, with
    # the rate annealed. Before, the run went on with a 20-epoch schedule and stopped at the
    # deadline after epoch 6 with the rate still near its peak.
    slow = {reading: 10 for reading in range(5, 40)}
    metrics, log = _finetune(tmp_path, monkeypatch, tick=1, step_s=1.0, later=slow, budget_minutes=1, epochs=20)
    assert "budget: epoch 2 took 10 s: 6 epoch(s) in all, not 20" in log
    assert metrics["planned_epochs"] == 6 and metrics["epochs_run"] == 6 and metrics["stopped"] == "planned"
    rates = [c["backbone_lr"] for c in json.loads((tmp_path / "out" / "finetune" / "curve.json").read_text())
             if c["phase"] == "finetune"]
    peak = finetune.PROFILES["cpu"]["backbone_lr"]
    assert rates[1] > 0.1 * peak and rates[-1] < 1e-3 * peak  # annealed by the end of the shorter schedule
    assert all(a >= b for a, b in zip(rates[2:], rates[3:]))  # from the re-plan on, only down: no jump back up


def test_epochs_whose_time_changes_after_the_first_replan_without_the_rate_jumping(tmp_path, monkeypatch):
    # The first epoch pays one-off costs (10 s on the clock, 5 epochs planned); the second takes 1 s:
    # the plan grows to the 20 allowed, decaying from the rate it had reached. The third takes 3 s
    # (16 epochs), the fourth 1 s again (20): a schedule already re-decayed past its peak must not
    # climb back to a peak at either change.
    metrics, log = _finetune(tmp_path, monkeypatch, tick=1, step_s=5.0, later={4: 10, 6: 3}, budget_minutes=1,
                             epochs=20)
    assert "an epoch takes 10 s here: 5 epoch(s) in all" in log
    assert "budget: epoch 2 took 1 s: 20 epoch(s) in all, not 5" in log
    assert "budget: epoch 3 took 3 s: 16 epoch(s) in all, not 20" in log
    assert "budget: epoch 4 took 1 s: 20 epoch(s) in all, not 16" in log
    assert metrics["planned_epochs"] == 20 and metrics["epochs_run"] == 20 and metrics["stopped"] == "planned"
    rates = [c["backbone_lr"] for c in json.loads((tmp_path / "out" / "finetune" / "curve.json").read_text())
             if c["phase"] == "finetune"]
    assert all(a >= b for a, b in zip(rates[1:], rates[2:])) and rates[-1] < 1e-3 * rates[1]


def test_a_new_length_past_the_peak_decays_from_the_current_rate():
    from edgepipe.pipeline.schedule import _redecay, one_cycle

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 2e-4}, {"params": [params[1]], "lr": 1e-3}])
    sched = one_cycle(opt, [2e-4, 1e-3], 200)
    for _ in range(80):  # past the peak (step 50)
        opt.step(); sched.step()
    state = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    current = [g["lr"] for g in opt.param_groups]
    for total, steps in ((100, 19), (400, 319)):  # shorter, then longer than the 200 planned
        opt.load_state_dict(state["opt"]); sched.load_state_dict(state["sched"])
        sched = _redecay(opt, sched, total)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(current)
        rates = []
        for _ in range(steps):
            opt.step(); sched.step(); rates.append(opt.param_groups[0]["lr"])
        assert all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 1e-8  # the final rate at the last step


def test_cheap_epochs_train_longer_and_expensive_ones_keep_the_warm_up(tmp_path, monkeypatch):
    cheap, _ = _finetune(tmp_path / "cheap", monkeypatch, tick=0.01, step_s=0.001, budget_minutes=1, epochs=12)
    assert cheap["planned_epochs"] == 12 and cheap["epochs_run"] == 12 and cheap["stopped"] == "planned"
    dear, log = _finetune(tmp_path / "dear", monkeypatch, tick=0.01, step_s=100.0, budget_minutes=1, epochs=12)
    assert dear["planned_epochs"] == 0 and dear["epochs_run"] == 0 and dear["best_epoch"] == 0
    assert "the budget leaves no time for one full fine-tune epoch" in log


@pytest.mark.parametrize("settings, budget, epochs", [
    ({}, BUDGET_CPU, 40),  # the CPU profile: a budget, and at most 40 epochs
    ({"epochs": 7}, None, 7),  # an explicit epoch count without a budget: exactly that, on any machine
    ({"epochs": 7, "budget_minutes": 2.5}, 2.5, 7),
    ({"budget_minutes": 30}, 30, 40),
])
def test_an_explicit_epoch_count_or_budget_wins_over_the_profile(settings, budget, epochs):
    recipe = resolve_recipe(FinetuneConfig(device="cpu", **settings))
    assert (recipe.budget_minutes, recipe.epochs) == (budget, epochs)


def test_early_stopping_waits_for_the_learning_rate_peak(tmp_path, monkeypatch):
    """Val accuracy dips while the one-cycle rate climbs: patience counts only the epochs after the
    peak. Scripted logits (class 0 for every image: half right) never beat the warm-up's head; with
    patience 1 and 8 one-step epochs (the rate peaks in epoch 2), training stops after epoch 3, not 1."""
    monkeypatch.setattr(finetune, "torch_logits",
                        lambda model, x, spec, device: torch.nn.functional.one_hot(
                            torch.zeros(len(x), dtype=torch.long), 2).numpy().astype("float32"))
    cfg = write_tiny_project(tmp_path, finetune={"warmup_epochs": 1, "epochs": 8, "patience": 1, "batch_size": 32})
    result = invoke("finetune", cfg)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]["finetune"]["metrics"]
    assert metrics["stopped"] == "patience" and metrics["epochs_run"] == 3


def test_the_step_probe_leaves_the_model_and_the_random_streams_as_they_were():
    import timm

    from edgepipe.pipeline.backbones import preprocess_spec
    from edgepipe.pipeline.finetune import _Normalize, _probe_step_seconds

    model = timm.create_model("tf_efficientnet_lite0", num_classes=2, drop_rate=0.5)  # dropout draws random numbers
    recipe = resolve_recipe(FinetuneConfig(device="cpu", batchnorm="train", batch_size=4))
    images, labels = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1] * 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    seconds = _probe_step_seconds(model, images, labels, recipe, torch.device("cpu"),
                                  _Normalize(preprocess_spec("tf_efficientnet_lite0", 32), "cpu"))
    after_probe = torch.rand(3)
    torch.manual_seed(3)
    assert seconds > 0 and torch.equal(after_probe, torch.rand(3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # batch-norm statistics too
    assert all(p.grad is None for p in model.parameters())
