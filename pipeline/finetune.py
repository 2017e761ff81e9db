"""Fine-tune stage: transfer learning from ImageNet weights to the user's classes.

Recipe: (1) head-only warm-up on backbone features computed once (cheap on a CPU), then
(2) the whole network with a lower backbone learning rate, one-cycle schedule, label-preserving
augmentation (zoom, shift, brightness, contrast; flips and 90° turns only when the config opts in),
class-weighted loss, early stopping on val accuracy; the best epoch is kept. Settings left null in
the config come from the device profile below: CPU builds train for a time budget, GPU builds get
the full recipe. Under torchrun every rank runs this (distributed.py); epoch snapshots let a killed
run resume (snapshot.py). Augmentation: augment.py; learning-rate schedule and budget: schedule.py.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgepipe.core.console import console, progress
from edgepipe.core.files import write_json
from edgepipe.pipeline import distributed
from edgepipe.pipeline.augment import _augment, _Normalize
from edgepipe.pipeline.backbones import create_model
from edgepipe.pipeline.config import AugmentConfig, BuildConfig, FinetuneConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.distributed import Ranks
from edgepipe.pipeline.manifest import Manifest
from edgepipe.pipeline.schedule import _past_peak, _redecay, _stretch, one_cycle, plan_epochs, rising_epochs
from edgepipe.pipeline.snapshot import Snapshots
from edgepipe.pipeline.torch_model import pick_device, save_checkpoint, torch_logits

BUDGET_CPU = 7.0  # minutes for the fine-tune stage on a CPU (see PROFILES)

# Device profiles for the settings a config leaves null.
# Measured on ELPV (1200-image subset, 160 px, 3 epochs, test accuracy): frozen batch norm 87.0-87.3 %
# vs 80-82 % with batch norm in train mode (the new domain's batch statistics shift every feature
# the warmed-up head was fit on); bf16 autocast on the CPU cost 2.7 pt against fp32. Validation
# accuracy dips while the one-cycle schedule is at its peak, so patience counts from the peak; on
# MNIST-5k at 64 px (20+ budget epochs) patience 3 stopped at epoch 9 (test 97.5 %), the whole
# schedule reached 98.3 %: on a CPU the budget bounds the time, patience 10 only ends a plateau.
# The CUDA profile is the long recipe (cf. 87.7 % after 30 epochs with batch norm training).
# A CPU build trains for a wall-time budget, not a fixed epoch count: small or low-resolution
# datasets get many cheap epochs, ELPV at 224 px the few that keep `make run` within 15 minutes.
PROFILES = {
    "cpu": {"warmup_epochs": 30, "epochs": 40, "budget_minutes": BUDGET_CPU, "backbone_lr": 2e-4, "patience": 10,
            "batchnorm": "frozen"},
    "cuda": {"warmup_epochs": 10, "epochs": 30, "budget_minutes": None, "backbone_lr": 5e-4, "patience": 8,
             "batchnorm": "train"},
}
_clock = time.perf_counter  # what the budget is measured with (tests replace it)


@dataclass(frozen=True)
class Recipe:
    device: str
    precision: str
    warmup_epochs: int
    epochs: int
    batch_size: int
    head_lr: float
    backbone_lr: float
    weight_decay: float
    patience: int
    batchnorm: str
    budget_minutes: float | None  # None: exactly `epochs` full epochs (early stopping aside)
    class_weighted_loss: bool
    augment: AugmentConfig


def resolve_recipe(cfg: FinetuneConfig) -> Recipe:
    device = pick_device(cfg.device)
    profile = PROFILES[device.type]
    precision = cfg.precision
    if precision == "auto":  # bf16 autocast only on CUDA: on CPUs it cost accuracy (see above)
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    pick = lambda name: getattr(cfg, name) if getattr(cfg, name) is not None else profile[name]  # noqa: E731
    # An explicit epoch count without a budget means that many epochs; otherwise the budget decides.
    budget = cfg.budget_minutes if cfg.budget_minutes is not None else \
        (None if cfg.epochs is not None else profile["budget_minutes"])
    return Recipe(device=device.type, precision=precision, warmup_epochs=pick("warmup_epochs"), epochs=pick("epochs"),
                  batch_size=cfg.batch_size, head_lr=cfg.head_lr, backbone_lr=pick("backbone_lr"),
                  weight_decay=cfg.weight_decay, patience=pick("patience"), batchnorm=pick("batchnorm"),
                  class_weighted_loss=cfg.class_weighted_loss, augment=cfg.augment, budget_minutes=budget)


def _class_weights(labels: np.ndarray, n_classes: int, on: bool) -> torch.Tensor | None:
    if not on:
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
    return torch.tensor(counts.sum() / (n_classes * np.maximum(counts, 1)))


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _features(model, rgb8: np.ndarray, spec, device, batch_size=64, adapt_batchnorm=False) -> torch.Tensor:
    """Pooled backbone features. With adapt_batchnorm, batch norm uses batch statistics (as in
    training) and its running statistics are re-estimated on these images (AdaBN), so the head
    fit on these features still fits once the whole network trains."""
    model.eval()
    if adapt_batchnorm:
        for bn in _batchnorms(model):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the pass
            bn.train()
    feats = []
    for i in range(0, len(rgb8), batch_size):
        x = torch.from_numpy(spec.normalize(rgb8[i:i + batch_size])).to(device).contiguous(memory_format=torch.channels_last)
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float())
    if adapt_batchnorm:
        for bn in _batchnorms(model):
            bn.momentum = 0.1
        model.eval()
    return torch.cat(feats)


def _warmup_head(model, data: PreparedData, recipe: Recipe, device, gen, bar) -> list[dict]:
    """Train only the classifier, on features computed once: the backbone is frozen anyway."""
    x_tr, y_tr = data.subset("train")
    x_va, y_va = data.subset("val")
    task = bar.add_task("features (warm-up)", total=2, status="")
    f_tr = _features(model, x_tr, data.spec, device, adapt_batchnorm=recipe.batchnorm == "train"); bar.advance(task)
    f_va = _features(model, x_va, data.spec, device); bar.advance(task)
    head = model.get_classifier()
    opt = torch.optim.AdamW(head.parameters(), lr=recipe.head_lr, weight_decay=recipe.weight_decay)
    weight = _class_weights(y_tr, len(data.classes), recipe.class_weighted_loss)
    weight = weight.to(device) if weight is not None else None
    yt, yv = torch.from_numpy(y_tr).to(device), torch.from_numpy(y_va).to(device)
    curve, best = [], (-1.0, None)
    task = bar.add_task("warm-up head", total=recipe.warmup_epochs, status="")
    for epoch in range(1, recipe.warmup_epochs + 1):
        perm = torch.randperm(len(yt), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(perm), recipe.batch_size):
            b = perm[i:i + recipe.batch_size]
            loss = F.cross_entropy(head(f_tr[b]), yt[b], weight=weight)
            opt.zero_grad(); loss.backward(); opt.step()
            total += loss.item() * len(b)
        with torch.no_grad():
            val_acc = (head(f_va).argmax(1) == yv).float().mean().item()
        curve.append({"phase": "warmup", "epoch": epoch, "train_loss": total / len(perm), "val_accuracy": val_acc})
        if val_acc > best[0]:
            best = (val_acc, copy.deepcopy(head.state_dict()))
        bar.update(task, advance=1, status=f"loss {total / len(perm):.3f}  val {val_acc:.1%}")
    if best[1] is not None:
        head.load_state_dict(best[1])
    console.print(f"warm-up: best val accuracy {best[0]:.2%} with the backbone frozen")
    return curve


def _train_mode(model: torch.nn.Module, batchnorm: str) -> None:
    model.train()
    if batchnorm == "frozen":
        for bn in _batchnorms(model):
            bn.eval()


def _probe_step_seconds(model, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, device, normalize,
                        batch: int | None = None) -> float:
    """Seconds of one training step (augment, forward, backward) at `batch` images (the recipe's
    batch size; a rank's slice of it under torchrun), timed on the model itself. Its weights and
    batch-norm statistics are restored after, and the probe draws from its own generator, so
    training is the same as without it."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    _train_mode(model, recipe.batchnorm)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16")
    times = []
    # dropout draws from the global generators: fork them, so the run after the probe is the same
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(5):
            b = torch.randperm(len(labels), generator=gen)[:batch or recipe.batch_size]
            start = time.perf_counter()
            x = normalize(_augment(images[b].to(device).float() / 255.0, recipe.augment, gen))
            with autocast:
                loss = F.cross_entropy(model(x).float(), labels[b].to(device))
            loss.backward()
            model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    model.load_state_dict(state)
    # the first steps pay one-off costs (allocation, kernel selection): the fastest of the rest is
    # still slower than the steady state on a CPU (ELPV, 224 px: 1.9 s against 1.4 s), and the plan
    # is corrected with the measured time after the first epoch
    return min(times[1:])


def _plan(model, images, labels, n_val: int, recipe: Recipe, device, normalize, deadline: float | None,
          ranks: Ranks) -> dict:
    """How many full epochs to run: recipe.epochs, or, with a budget, what fits before the deadline
    (timed on rank 0, so every rank plans the same epochs)."""
    if deadline is None:
        return {"planned_epochs": recipe.epochs, "budget_s": None}
    steps = -(-len(labels) // recipe.batch_size)
    batch = -(-recipe.batch_size // ranks.world)
    step_s = ranks.from_main(_probe_step_seconds(model, images, labels, recipe, device, normalize, batch))
    # + optimizer step and data movement; the val pass is forward only (about a third of a step per image)
    epoch_s = steps * step_s * 1.1 + n_val / recipe.batch_size * step_s / 3
    remaining = deadline - ranks.from_main(_clock())
    planned = plan_epochs(remaining, epoch_s, recipe.epochs)
    console.print(f"budget: {remaining / 60:.1f} min left for the full fine-tune, ~{epoch_s:.0f} s an epoch here "
                  f"-> {planned} epoch(s) (at most {recipe.epochs})")
    if planned == 0:
        console.print("[yellow]the budget leaves no time for one full fine-tune epoch: the warm-up head is kept "
                      "(raise finetune.budget_minutes to fine-tune the whole network)")
    return {"planned_epochs": planned, "budget_s": round(remaining, 1), "epoch_s_estimate": round(epoch_s, 1)}


def _val_accuracy(model, x_va: np.ndarray, y_va: np.ndarray, spec, device, ranks: Ranks) -> float:
    """Val accuracy, each rank scoring its slice of the val split (all of it in a 1-process run)."""
    idx = ranks.shard(torch.arange(len(y_va))).numpy()
    correct = float((torch_logits(model, x_va[idx], spec, device).argmax(1) == y_va[idx]).sum()) if len(idx) else 0.0
    return ranks.sum([correct])[0] / len(y_va)


def _finetune_all(model, data: PreparedData, recipe: Recipe, device, gen, bar, start_val: float,
                  deadline: float | None = None, ranks: Ranks = Ranks(),
                  snapshot: Callable[[dict], None] | None = None,
                  resume: dict | None = None) -> tuple[list[dict], int, dict]:
    """Train every layer; returns the fine-tune curve, the best epoch (0: the warm-up state stayed
    best) and the plan: the epochs planned for the budget and why training stopped. `snapshot` is
    given the state after each epoch, `resume` a state to continue from (see snapshot.py)."""
    x_tr, y_tr = data.subset("train")
    x_va, y_va = data.subset("val")
    images = torch.from_numpy(x_tr).permute(0, 3, 1, 2).contiguous()  # uint8 N,3,H,W: 4x smaller than float
    labels = torch.from_numpy(y_tr)
    normalize = _Normalize(data.spec, device)
    head_params = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": body_params, "lr": recipe.backbone_lr},
                             {"params": head_params, "lr": recipe.head_lr}], weight_decay=recipe.weight_decay)
    steps = -(-len(labels) // recipe.batch_size)
    max_lrs = [recipe.backbone_lr, recipe.head_lr]
    if resume is None:
        plan = _plan(model, images, labels, len(y_va), recipe, device, normalize, deadline, ranks)
        epochs = plan["planned_epochs"]
        plan["stopped"] = "planned"
        sched = one_cycle(opt, max_lrs, epochs * steps)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        curve, best_val, best_epoch, stale, epoch = [], start_val, 0, 0, 0
    else:
        plan, epochs, epoch = dict(resume["plan"]), resume["epochs"], resume["epoch"]
        model.load_state_dict(resume["model"])
        # the schedule first: building one sets the rates of its step 0, which the optimizer's
        # saved state then overwrites with those of the step the run was at
        sched = one_cycle(opt, max_lrs, epochs * steps)
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        best_state, curve = resume["best_state"], list(resume["curve"])
        best_val, best_epoch, stale = resume["best_val"], resume["best_epoch"], resume["stale"]
    # Val accuracy dips while the rate climbs to its peak (the backbone starts moving): early
    # stopping counts only the epochs after the peak, or a long budget would stop in that dip.
    rising = rising_epochs(epochs, steps)
    if resume is not None:  # a re-plan past the peak keeps the peak where it was, not where a new cycle has it
        rising = resume.get("rising", rising)
    net = distributed.wrap(model, ranks, device, sync_batchnorm=recipe.batchnorm == "train")
    weight = _class_weights(y_tr, len(data.classes), recipe.class_weighted_loss)
    weight_on_device = None if weight is None else weight.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16")
    now = ranks.from_main(_clock())  # once per epoch: its length and the time left come from one clock
    while epoch < epochs:  # under a budget, `epochs` is re-planned after every epoch
        epoch += 1
        _train_mode(net, recipe.batchnorm)
        left = "" if deadline is None else f" (budget: {max(0.0, deadline - now) / 60:.1f} min left)"
        task = bar.add_task(f"fine-tune {epoch}/{epochs}{left}", total=steps, status="")
        perm = torch.randperm(len(labels), generator=gen)
        total, started, rate = 0.0, now, None
        for i in range(0, len(perm), recipe.batch_size):
            b = perm[i:i + recipe.batch_size]
            if len(b) < max(2, ranks.world):  # batch norm cannot train on one image; each rank needs one
                continue
            # The whole global batch is augmented on every rank (same generator, same draws) and each
            # rank trains on its slice: the step is the 1-process step at any world size.
            mine = ranks.shard(torch.arange(len(b)))
            x = normalize(_augment(images[b].to(device).float() / 255.0, recipe.augment, gen))[mine.to(device)]
            # the global batch's mean loss: each rank's sum over the batch's (weighted) size; DDP
            # averages the gradients over the ranks, hence the factor world
            size = float(len(b)) if weight is None else float(weight[labels[b]].sum())
            with autocast:
                loss_sum = F.cross_entropy(net(x).float(), labels[b][mine].to(device), reduction="sum",
                                           weight=weight_on_device)
            loss = loss_sum * (ranks.world / size)
            rate = opt.param_groups[0]["lr"]  # the backbone's rate this step ran at (for the curve)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
            total += loss_sum.item() * len(b) / size
            bar.update(task, advance=1, status=f"loss {loss_sum.item() / len(mine):.3f}")
        total = ranks.sum([total])[0]
        val_acc = _val_accuracy(model, x_va, y_va, data.spec, device, ranks)
        now = ranks.from_main(_clock())
        curve.append({"phase": "finetune", "epoch": epoch, "train_loss": total / len(perm), "val_accuracy": val_acc,
                      "epoch_s": round(now - started, 1), "backbone_lr": rate})
        bar.update(task, status=f"loss {total / len(perm):.3f}  val {val_acc:.1%}")
        console.print(f"epoch {epoch}: train loss {total / len(perm):.3f}, val accuracy {val_acc:.2%}, "
                      f"{curve[-1]['epoch_s']:.0f} s")
        if val_acc > best_val:
            best_val, best_epoch, stale = val_acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += epoch > rising
            if stale >= recipe.patience:
                console.print(f"early stop: val accuracy has not improved for {stale} epoch(s)")
                plan["stopped"] = "patience"
                break
        if deadline is not None and epoch == 1 and epochs > 0:  # re-plan with the measured epoch time
            replanned = 1 + plan_epochs(deadline - now, now - started, recipe.epochs - 1)
            if replanned != epochs:
                console.print(f"budget: an epoch takes {now - started:.0f} s here: {replanned} epoch(s) in all, "
                              f"not {epochs}")
                epochs, plan["planned_epochs"] = replanned, replanned
                if epochs > 1:
                    sched = _stretch(opt, sched, max_lrs, epochs * steps)
                    rising = rising_epochs(epochs, steps)
        elif deadline is not None and epoch < epochs and deadline - now >= now - started:
            # Every later epoch re-plans with its own time: the first pays one-off costs (ELPV at
            # 224 px: 98 s, then 75-80 s, a whole epoch left unused), a busy machine slows later ones.
            # Past the rate's peak the schedule decays from the current rate over the new length, so
            # the last epoch still ends annealed and the rate never jumps.
            fits = epoch + max(1, plan_epochs(deadline - now, now - started, recipe.epochs - epoch))
            if fits != epochs:
                console.print(f"budget: epoch {epoch} took {now - started:.0f} s: {fits} epoch(s) in all, not {epochs}")
                past_peak = _past_peak(sched)
                epochs, plan["planned_epochs"] = fits, fits
                if past_peak:
                    sched = _redecay(opt, sched, epochs * steps)
                else:
                    sched = _stretch(opt, sched, max_lrs, epochs * steps)
                    rising = rising_epochs(epochs, steps)
        if deadline is not None and epoch < epochs and deadline - now < now - started:  # no time for another
            console.print(f"budget: stopping after epoch {epoch} of {epochs}: "
                          f"{max(0.0, deadline - now):.0f} s left, an epoch takes {now - started:.0f} s")
            plan["stopped"] = "budget"
            break
        if snapshot is not None and epoch < epochs:
            snapshot({"epoch": epoch, "epochs": epochs, "plan": plan, "curve": curve,
                      "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "generator": gen.get_state(),
                      "torch_rng": torch.get_rng_state(), "best_state": best_state, "best_val": best_val,
                      "best_epoch": best_epoch, "stale": stale, "rising": rising,
                      "budget_left_s": None if deadline is None else deadline - now})
    model.load_state_dict(best_state)
    return curve, best_epoch, plan


def run_finetune(cfg: BuildConfig, data: PreparedData, manifest: Manifest | None) -> Path | None:
    """Fine-tune, keep the best checkpoint by val accuracy, record val/test accuracy of the float model.

    Under torchrun every rank runs this; rank 0 alone is given the manifest and writes (see
    distributed.py). Returns the checkpoint (None on the other ranks)."""
    ranks = distributed.from_env()
    recipe = resolve_recipe(cfg.finetune)
    distributed.check_recipe(ranks, torch.device(recipe.device), recipe.batch_size, recipe.batchnorm)
    device = distributed.init(ranks, torch.device(recipe.device))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    out = cfg.output_dir / "finetune"
    key = (manifest.data["stages"].get("finetune") or {}).get("key") if manifest is not None else None
    snapshots = Snapshots(out / "snapshot.pt", key, ranks, asdict(recipe))
    resume = snapshots.load()
    ran_before = resume["wall_s"] if resume is not None else 0.0  # seconds the snapshot's run trained
    # the model (and a weights download) before the clock starts: the budget is for training
    init = cfg.finetune.init_checkpoint  # an update: the previous release's model, not ImageNet's
    model, weights = create_model(cfg.model.backbone, len(data.classes), cfg.model.pretrained and init is None,
                                  cfg.model.weights)
    if init is not None:
        from edgepipe.pipeline.update import load_init_checkpoint

        weights = load_init_checkpoint(model, init)
    model = model.to(device).to(memory_format=torch.channels_last)
    start = ranks.from_main(_clock())
    budget_s = recipe.budget_minutes * 60 if recipe.budget_minutes else None
    if resume is not None and resume["budget_left_s"] is not None:
        budget_s = resume["budget_left_s"]
    deadline = start + budget_s if budget_s is not None else None
    console.print(f"fine-tune {cfg.model.backbone} at {cfg.model.image_size}px on {recipe.device} ({recipe.precision})"
                  + (f" x {ranks.world} processes" if ranks.enabled else "")
                  + f"; train {len(data.split.train)} / val {len(data.split.val)} images")
    console.print(f"augmentation: {cfg.finetune.augment.describe()}")
    with progress() as bar:
        if resume is None:
            curve = _warmup_head(model, data, recipe, device, gen, bar) if recipe.warmup_epochs else []
        else:
            curve = list(resume["warmup_curve"])
        # rank 0's: the best-epoch and patience decisions must be the same on every rank
        warm_val = ranks.from_main(max((c["val_accuracy"] for c in curve), default=-1.0))
        if recipe.epochs:
            warm_curve = list(curve)

            def snapshot(state: dict) -> None:
                snapshots.save({**state, "warmup_curve": warm_curve,
                                "wall_s": ran_before + time.perf_counter() - t0})

            ft_curve, best_epoch, plan = _finetune_all(model, data, recipe, device, gen, bar, warm_val, deadline,
                                                       ranks, snapshot, resume)
        else:
            ft_curve, best_epoch, plan = [], 0, {"planned_epochs": 0, "budget_s": None, "stopped": "planned"}
    curve += ft_curve
    if not ranks.main:
        return None

    x_va, y_va = data.subset("val")
    x_te, y_te = data.subset("test")
    val_acc = float((torch_logits(model, x_va, data.spec, device).argmax(1) == y_va).mean())
    test_acc = float((torch_logits(model, x_te, data.spec, device).argmax(1) == y_te).mean())
    wall = time.perf_counter() - t0 + ran_before
    ckpt = save_checkpoint(out / "model.pt", model.cpu(), cfg.model.backbone, data.classes, data.spec)
    snapshots.discard()
    curve_path = write_json(out / "curve.json", curve)
    metrics = {"val_accuracy": val_acc, "test_accuracy": test_acc, "best_epoch": best_epoch,
               "epochs_run": len(ft_curve), "wall_s": round(wall, 1), "budget_minutes": recipe.budget_minutes,
               "processes": ranks.world, "resumed_after_epoch": resume["epoch"] if resume is not None else None, **plan}
    metrics_path = write_json(out / "metrics.json", metrics)
    manifest.data["weights"] = {"backbone": cfg.model.backbone, "origin": weights.origin,
                                "source": weights.source, "sha256": weights.sha256}
    manifest.record_stage("finetune", {"checkpoint": ckpt, "curve": curve_path, "metrics": metrics_path}, metrics,
                          recipe={k: v for k, v in asdict(recipe).items() if k != "augment"} | {"augment": cfg.finetune.augment.model_dump()})
    console.print(f"float model: val {val_acc:.2%}  test {test_acc:.2%}  ({wall:.0f} s)")
    return ckpt
