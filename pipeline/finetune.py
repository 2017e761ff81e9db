"""Fine-tune stage: transfer learning from ImageNet weights to the user's classes.

Recipe: (1) head-only warm-up on backbone features computed once (cheap on a CPU), then
(2) the whole network with a lower backbone learning rate, one-cycle schedule, label-preserving
augmentation (zoom, shift, brightness, contrast; flips and 90° turns only when the config opts in),
class-weighted loss, early stopping on val accuracy; the best epoch is kept. Settings left null in the config come from the device
profile below: CPU builds must finish in minutes, GPU builds get the full recipe.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgepipe.core.console import console, progress
from edgepipe.core.files import write_json
from edgepipe.pipeline.backbones import create_model
from edgepipe.pipeline.config import AugmentConfig, BuildConfig, FinetuneConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.manifest import Manifest
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


def _augment(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """x: N,3,H,W float in [0,1]. Per sample: zoom-in and shift (one affine resample; the border
    pixels repeat where the shift passes the edge), then the opt-in flips and 90° turns, then
    contrast and brightness jitter. Nothing here mirrors or turns an image unless asked."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=gen).to(x.device)  # noqa: E731
    if aug.zoom or aug.shift:
        scale = 1 / (1 + r(n) * aug.zoom)  # < 1: the sampling grid covers less than the image = zoom in
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = (r(n, 2) * 2 - 1) * 2 * aug.shift  # grid coordinates span 2 units per side
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if aug.flips:
        x = torch.where(r(n, 1, 1, 1) < 0.5, x.flip(3), x)
        x = torch.where(r(n, 1, 1, 1) < 0.5, x.flip(2), x)
    if aug.rot90 and x.shape[2] == x.shape[3]:
        k = torch.randint(0, 4, (n,), generator=gen)
        x = torch.stack([torch.rot90(xi, int(ki), (1, 2)) for xi, ki in zip(x, k)])
    if aug.contrast:
        c = 1 + (r(n, 1, 1, 1) * 2 - 1) * aug.contrast
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * c + m
    if aug.brightness:
        x = x + (r(n, 1, 1, 1) * 2 - 1) * aug.brightness
    return x.clamp(0, 1)


class _Normalize:
    """The spec's normalisation on augmented NCHW tensors already on the training device."""

    def __init__(self, spec, device):
        self.spec = spec
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return self.spec.standardize(x01, self.mean, self.std).contiguous(memory_format=torch.channels_last)


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


def warmup_share(total_steps: int) -> float:
    """The share of a one-cycle schedule spent raising the learning rate (see one_cycle)."""
    if total_steps < 3:
        return 0.0
    return min(max(0.25, 2 / total_steps), 1 - 1 / total_steps)


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


def _train_mode(model: torch.nn.Module, batchnorm: str) -> None:
    model.train()
    if batchnorm == "frozen":
        for bn in _batchnorms(model):
            bn.eval()


def plan_epochs(remaining_s: float, epoch_s: float, max_epochs: int) -> int:
    """Full fine-tune epochs that fit in remaining_s at epoch_s each, at most max_epochs; 5 % is
    kept for the final evaluation and the checkpoint."""
    if epoch_s <= 0:
        return max_epochs
    return max(0, min(max_epochs, int(remaining_s * 0.95 // epoch_s)))


def _probe_step_seconds(model, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, device, normalize) -> float:
    """Seconds of one training step (augment, forward, backward) at the recipe's batch size, timed
    on the model itself. Its weights and batch-norm statistics are restored after, and the probe
    draws from its own generator, so training is the same as without it."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    _train_mode(model, recipe.batchnorm)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16")
    times = []
    # dropout draws from the global generators: fork them, so the run after the probe is the same
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(5):
            b = torch.randperm(len(labels), generator=gen)[:recipe.batch_size]
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


def _plan(model, images, labels, n_val: int, recipe: Recipe, device, normalize, deadline: float | None) -> dict:
    """How many full epochs to run: recipe.epochs, or, with a budget, what fits before the deadline."""
    if deadline is None:
        return {"planned_epochs": recipe.epochs, "budget_s": None}
    steps = -(-len(labels) // recipe.batch_size)
    step_s = _probe_step_seconds(model, images, labels, recipe, device, normalize)
    # + optimizer step and data movement; the val pass is forward only (about a third of a step per image)
    epoch_s = steps * step_s * 1.1 + n_val / recipe.batch_size * step_s / 3
    remaining = deadline - _clock()
    planned = plan_epochs(remaining, epoch_s, recipe.epochs)
    console.print(f"budget: {remaining / 60:.1f} min left for the full fine-tune, ~{epoch_s:.0f} s an epoch here "
                  f"-> {planned} epoch(s) (at most {recipe.epochs})")
    if planned == 0:
        console.print("[yellow]the budget leaves no time for one full fine-tune epoch: the warm-up head is kept "
                      "(raise finetune.budget_minutes to fine-tune the whole network)")
    return {"planned_epochs": planned, "budget_s": round(remaining, 1), "epoch_s_estimate": round(epoch_s, 1)}


def _finetune_all(model, data: PreparedData, recipe: Recipe, device, gen, bar, start_val: float,
                  deadline: float | None = None) -> tuple[list[dict], int, dict]:
    """Train every layer; returns the curve, the best epoch (0: the warm-up state stayed best) and
    the plan: the epochs planned for the budget and why training stopped."""
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
    plan = _plan(model, images, labels, len(y_va), recipe, device, normalize, deadline)
    epochs = plan["planned_epochs"]
    plan["stopped"] = "planned"
    sched = one_cycle(opt, [recipe.backbone_lr, recipe.head_lr], epochs * steps)
    # Val accuracy dips while the rate climbs to its peak (the backbone starts moving): early
    # stopping counts only the epochs after the peak, or a long budget would stop in that dip.
    rising = math.ceil(warmup_share(epochs * steps) * epochs)
    weight = _class_weights(y_tr, len(data.classes), recipe.class_weighted_loss)
    weight = weight.to(device) if weight is not None else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16")
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    curve, best_val, best_epoch, stale = [], start_val, 0, 0
    now = _clock()  # read once per epoch: the epoch's length and the time left come from the same clock
    epoch = 0
    while epoch < epochs:  # `epochs` may change once, when the budget is re-planned after epoch 1
        epoch += 1
        _train_mode(model, recipe.batchnorm)
        left = "" if deadline is None else f" (budget: {max(0.0, deadline - now) / 60:.1f} min left)"
        task = bar.add_task(f"fine-tune {epoch}/{epochs}{left}", total=steps, status="")
        perm = torch.randperm(len(labels), generator=gen)
        total, started = 0.0, now
        for i in range(0, len(perm), recipe.batch_size):
            b = perm[i:i + recipe.batch_size]
            if len(b) < 2:  # batch norm cannot train on a single sample
                continue
            x = normalize(_augment(images[b].to(device).float() / 255.0, recipe.augment, gen))
            with autocast:
                loss = F.cross_entropy(model(x).float(), labels[b].to(device), weight=weight)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step()
            total += loss.item() * len(b)
            bar.update(task, advance=1, status=f"loss {loss.item():.3f}")
        val_acc = float((torch_logits(model, x_va, data.spec, device).argmax(1) == y_va).mean())
        now = _clock()
        curve.append({"phase": "finetune", "epoch": epoch, "train_loss": total / len(perm), "val_accuracy": val_acc,
                      "epoch_s": round(now - started, 1)})
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
                    sched = _stretch(opt, sched, [recipe.backbone_lr, recipe.head_lr], epochs * steps)
                    rising = math.ceil(warmup_share(epochs * steps) * epochs)
        if deadline is not None and epoch < epochs and deadline - now < now - started:  # no time for another
            console.print(f"budget: stopping after epoch {epoch} of {epochs}: "
                          f"{max(0.0, deadline - now):.0f} s left, an epoch takes {now - started:.0f} s")
            plan["stopped"] = "budget"
            break
    model.load_state_dict(best_state)
    return curve, best_epoch, plan


def run_finetune(cfg: BuildConfig, data: PreparedData, manifest: Manifest) -> Path:
    """Fine-tune, keep the best checkpoint by val accuracy, record val/test accuracy of the float model."""
    recipe = resolve_recipe(cfg.finetune)
    device = torch.device(recipe.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    deadline = _clock() + recipe.budget_minutes * 60 if recipe.budget_minutes else None
    model, weights = create_model(cfg.model.backbone, len(data.classes), cfg.model.pretrained, cfg.model.weights)
    model = model.to(device).to(memory_format=torch.channels_last)
    console.print(f"fine-tune {cfg.model.backbone} at {cfg.model.image_size}px on {recipe.device} ({recipe.precision}); "
                  f"train {len(data.split.train)} / val {len(data.split.val)} images")
    console.print(f"augmentation: {cfg.finetune.augment.describe()}")
    with progress() as bar:
        curve = _warmup_head(model, data, recipe, device, gen, bar) if recipe.warmup_epochs else []
        warm_val = max((c["val_accuracy"] for c in curve), default=-1.0)
        ft_curve, best_epoch, plan = _finetune_all(model, data, recipe, device, gen, bar, warm_val, deadline) \
            if recipe.epochs else ([], 0, {"planned_epochs": 0, "budget_s": None, "stopped": "planned"})
    curve += ft_curve

    x_va, y_va = data.subset("val")
    x_te, y_te = data.subset("test")
    val_acc = float((torch_logits(model, x_va, data.spec, device).argmax(1) == y_va).mean())
    test_acc = float((torch_logits(model, x_te, data.spec, device).argmax(1) == y_te).mean())
    wall = time.perf_counter() - t0
    out = cfg.output_dir / "finetune"
    ckpt = save_checkpoint(out / "model.pt", model.cpu(), cfg.model.backbone, data.classes, data.spec)
    curve_path = write_json(out / "curve.json", curve)
    metrics = {"val_accuracy": val_acc, "test_accuracy": test_acc, "best_epoch": best_epoch,
               "epochs_run": len(ft_curve), "wall_s": round(wall, 1), "budget_minutes": recipe.budget_minutes, **plan}
    metrics_path = write_json(out / "metrics.json", metrics)
    manifest.data["weights"] = {"backbone": cfg.model.backbone, "origin": weights.origin,
                                "source": weights.source, "sha256": weights.sha256}
    manifest.record_stage("finetune", {"checkpoint": ckpt, "curve": curve_path, "metrics": metrics_path}, metrics,
                          recipe={k: v for k, v in asdict(recipe).items() if k != "augment"} | {"augment": cfg.finetune.augment.model_dump()})
    console.print(f"float model: val {val_acc:.2%}  test {test_acc:.2%}  ({wall:.0f} s)")
    return ckpt
