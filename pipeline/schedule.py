"""The learning-rate schedule of the full fine-tune and the epochs a time budget allows."""

from __future__ import annotations

import math

import torch


def warmup_share(total_steps: int) -> float:
    """The share of a one-cycle schedule spent raising the learning rate (see one_cycle)."""
    if total_steps < 3:
        return 0.0
    return min(max(0.25, 2 / total_steps), 1 - 1 / total_steps)


def rising_epochs(epochs: int, steps_per_epoch: int) -> int:
    """The epochs in which a one-cycle schedule of `epochs` epochs still raises the rate (the
    last one partly): early stopping counts none of them."""
    return math.ceil(warmup_share(epochs * steps_per_epoch) * epochs)


def one_cycle(opt: torch.optim.Optimizer, max_lrs: list[float], total_steps: int):
    """OneCycle with a 25 % warm-up, valid for any number of steps.

    torch's OneCycleLR divides by each phase's length in steps (pct_start * total - 1, then the
    rest): at 4 steps the warm-up is zero steps long (ZeroDivisionError), below that negative. So
    the warm-up takes at least 2 steps and the decay at least 1; under 3 steps the rate is constant."""
    if total_steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=total_steps,
                                               pct_start=warmup_share(total_steps))


def _stretch(opt: torch.optim.Optimizer, sched, max_lrs: list[float], total_steps: int):
    """The one-cycle schedule re-made for a new total length, continuing from the step it is at
    (when a budget's plan changes after the first epoch). From a 1-epoch plan that means a restart
    from near the peak rate: the first epoch already ran its whole cycle."""
    done = sched.last_epoch  # optimizer steps taken so far
    if total_steps < 3 or done >= total_steps:
        return sched
    for group, lr in zip(opt.param_groups, max_lrs):  # what OneCycleLR keeps when it starts at step 0
        group.setdefault("initial_lr", lr / 25)
        group["max_lr"], group["min_lr"] = lr, group["initial_lr"] / 1e4
        group.setdefault("max_momentum", 0.95)  # OneCycleLR's defaults (it cycles Adam's beta1)
        group.setdefault("base_momentum", 0.85)
    # last_epoch = done - 1: building a scheduler takes one step itself
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=total_steps,
                                               pct_start=warmup_share(total_steps), last_epoch=done - 1)


def _past_peak(sched) -> bool:
    """Whether the schedule in use (a re-decayed one included) has passed its peak rate."""
    if not isinstance(sched, torch.optim.lr_scheduler.OneCycleLR):
        return False
    # the end of its warm-up phase, in steps: torch keeps it (and saves it with the scheduler) only here
    return sched.last_epoch > sched._schedule_phases[0]["end_step"]


def _redecay(opt: torch.optim.Optimizer, sched, total_steps: int):
    """A one-cycle schedule past its peak given a new length, from the step it is at (a budget's plan
    changed): a cosine from the current rates down to the schedule's final ones over the steps
    left. Re-made like _stretch it would jump to where a cycle of that length would be by now: a
    shorter one is near its end (the epochs left would train at almost no rate), a longer one back
    up near its peak."""
    done = sched.last_epoch
    if not isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) or total_steps < 3 or done >= total_steps - 1:
        return sched
    rates = [group["lr"] for group in opt.param_groups]
    for group, lr in zip(opt.param_groups, rates):  # initial_lr and min_lr stay the first schedule's
        group["max_lr"] = lr
        if "betas" in group and "base_momentum" in group:  # Adam's beta1 also continues from where it is
            group["base_momentum"] = group["betas"][0]
    # the warm-up phase ends at this step, at the current rate: the decay starts from it
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=rates, total_steps=total_steps,
                                               pct_start=(done + 1) / total_steps, last_epoch=done - 1)


def plan_epochs(remaining_s: float, epoch_s: float, max_epochs: int) -> int:
    """Full fine-tune epochs that fit in remaining_s at epoch_s each, at most max_epochs; 5 % is
    kept for the final evaluation and the checkpoint."""
    if epoch_s <= 0:
        return max_epochs
    return max(0, min(max_epochs, int(remaining_s * 0.95 // epoch_s)))
