"""Adapt stage: unlabelled domain adaptation of the float model by its batch-norm statistics (AdaBN).

Field images from another camera, season or panel type shift every layer's activations. AdaBN
(Li et al. 2016) re-estimates each batch-norm layer's statistics on the new domain, so its
activations are normalised the way the training images' were; no weight changes, no label is
needed. The classic recipe sets the statistics to the new domain's moments, which is right only
when they were the training domain's moments. edgepipe's CPU profile keeps the ImageNet
statistics frozen while fine-tuning, so here each layer is mapped moment for moment: the field
images' activations get the per-channel mean and spread, after normalisation, that the train
images' activations had with the statistics the model was trained with. With statistics that
were the training domain's (batch norm trained), that is the classic AdaBN.

The stage sits between finetune and export. Without an `adapt` section it records nothing, and
every later stage reads the fine-tune's checkpoint (manifest.float_checkpoint).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from edgepipe.core.console import console, progress
from edgepipe.core.errors import DataError
from edgepipe.core.files import write_json
from edgepipe.core.preprocess import PreprocessSpec
from edgepipe.pipeline.config import ADAPT_MIN_IMAGES, AdaptConfig, BuildConfig
from edgepipe.pipeline.data import PreparedData
from edgepipe.pipeline.field_images import load_field_images
from edgepipe.pipeline.manifest import Manifest

BATCH = 64  # the field pass normalises each batch by its own moments: large enough to be steady


def reference_images(data: PreparedData, n: int, seed: int) -> np.ndarray:
    """The train images the field images are matched to: as many as there are field images (all
    of the train split if it is smaller), a seeded draw."""
    x_tr, _ = data.subset("train")
    pick = np.random.default_rng([seed, 4111]).permutation(len(x_tr))[:max(n, ADAPT_MIN_IMAGES)]
    return x_tr[np.sort(pick)]


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


class _Moments:
    """Per-channel mean and variance of a layer's input over every batch it saw: each batch's
    moments in float32 (one pass, no copy of the activations), combined in float64."""

    def __init__(self):
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds the batch; returns its own mean and variance."""
        var, mean = torch.var_mean(x.detach(), dim=[0, *range(2, x.dim())], correction=0)
        mean, var, n = mean.double(), var.double(), x.numel() // x.shape[1]
        self.n += n
        self.s = self.s + mean * n
        self.ss = self.ss + (var + mean * mean) * n
        return mean, var

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s / self.n
        return mean, (self.ss / self.n - mean * mean).clamp_min(0)


def _batches(rgb8: np.ndarray, spec: PreprocessSpec):
    for i in range(0, len(rgb8), BATCH):
        yield torch.from_numpy(spec.normalize(rgb8[i:i + BATCH])).contiguous(memory_format=torch.channels_last)


def _run_hooked(model, bns, hook, batches, on_batch) -> None:
    """Run every batch through `model` with `hook` called before each batch-norm layer."""
    hooks = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        for x in batches:
            model(x)
            on_batch and on_batch()
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, source: np.ndarray, target: np.ndarray, spec: PreprocessSpec,
                    on_batch=None, strength: float = 1.0) -> dict:
    """Re-estimate every batch-norm layer's running statistics of `model` (eval mode) so that
    `target` images are normalised as `source` (train) images were; at a strength under 1 each
    layer moves that share of the way (the mean linearly, the spread geometrically). Changes
    running_mean and running_var only. Returns a summary: layers, and how far the statistics moved."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")  # beyond 1 would extrapolate
    model.eval()
    bns = _batchnorms(model)
    if not bns:
        raise DataError("the model has no batch-norm layer: there are no statistics to adapt",
                        "remove the adapt section (or --adapt) for this backbone")
    src = {bn: _Moments() for bn in bns}
    def source_hook(bn, args):  # returns None: a pre-hook's return value would replace the input
        src[bn].add(args[0])

    _run_hooked(model, bns, source_hook, _batches(source, spec), on_batch)
    # Trained normalisation: (x - mu) / s. The train images' input moments m_s, v_s left it with
    # mean (m_s - mu) / s and spread sqrt(v_s) / s; the field images' moments m_t, v_t get the
    # same with s' = s * sqrt(v_t / v_s) and mu' = m_t - s' (m_s - mu) / s.
    trained = {bn: (bn.running_mean.double().clone(), (bn.running_var.double() + bn.eps).sqrt()) for bn in bns}
    source_moments = {bn: src[bn].mean_var() for bn in bns}

    def mapped(bn, mean_t, var_t):
        mu, s = trained[bn]
        mean_s, var_s = source_moments[bn]
        # running_var >= 0 means a std of at least sqrt(eps): mu' must be the one for that std
        s_new = (s * (var_t.clamp_min(1e-12) / var_s.clamp_min(1e-12)).sqrt()).clamp_min(bn.eps ** 0.5)
        return mean_t - s_new * (mean_s - mu) / s, (s_new * s_new - bn.eps).clamp_min(0)

    tgt = {bn: _Moments() for bn in bns}

    def field_hook(bn, args):
        # normalise this batch by its own moments (as train-mode batch norm does), so the layers
        # after it see field activations already adapted; the field's moments accumulate meanwhile
        mean, var = mapped(bn, *tgt[bn].add(args[0]))
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))

    _run_hooked(model, bns, field_hook, _batches(target, spec), on_batch)
    shifts = []
    for bn in bns:
        mean, var = mapped(bn, *tgt[bn].mean_var())
        mu, s = trained[bn]
        if strength < 1:
            # Part of the way from the trained statistics to the fully adapted ones, which were
            # measured with every layer before adapted in full. Blending inside the pass instead
            # (each layer's field moments measured after partly adapted layers) lost the training
            # domain anyway: ELPV mono -> poly, seed 0, strength 0.25 left mono at 75.5 % (poly
            # 49.3 %), below full adaptation's 78.0 %; this way 84.5 % (poly 33.9 %).
            s_full = (var + bn.eps).sqrt()
            mean, s_part = mu + strength * (mean - mu), s * (s_full / s) ** strength
            var = (s_part * s_part - bn.eps).clamp_min(0)
        shifts.append(float(((mean - mu).abs() / s).mean()))
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return {"layers": len(bns), "strength": strength, "mean_shift": round(float(np.mean(shifts)), 4),
            "max_layer_shift": round(float(np.max(shifts)), 4)}


def run_adapt(cfg: BuildConfig, data: PreparedData, manifest: Manifest) -> Path | None:
    """AdaBN on cfg.adapt.images: adapt/model.pt and adapt/adapt.json; nothing without an adapt section."""
    from edgepipe.pipeline.torch_model import load_checkpoint, save_checkpoint

    if cfg.adapt is None:
        return None
    t0 = time.perf_counter()
    target, skipped, found = load_field_images(cfg.adapt, data.spec, cfg.seed, cfg.dataset.on_bad_image)
    if len(target) < ADAPT_MIN_IMAGES:
        raise DataError(f"adapt.images {cfg.adapt.images} holds {len(target)} readable image(s): batch-norm "
                        f"statistics need at least {ADAPT_MIN_IMAGES}",
                        f"add field images there (a few hundred is better), or drop --adapt")
    source = reference_images(data, len(target), cfg.seed)
    model, meta = load_checkpoint(manifest.output("finetune", "checkpoint"))
    part = "" if cfg.adapt.strength == 1 else f", strength {cfg.adapt.strength:g}"
    console.print(f"adapt: batch-norm statistics on {len(target)} unlabelled field image(s) from {cfg.adapt.images} "
                  f"(train images for the reference: {len(source)}{part})")
    with progress() as bar:
        task = bar.add_task("AdaBN", total=-(-len(source) // BATCH) - (-len(target) // BATCH), status="")
        summary = adapt_batchnorm(model, source, target, data.spec, on_batch=lambda: bar.advance(task),
                                  strength=cfg.adapt.strength)
    out = cfg.output_dir / "adapt"
    ckpt = save_checkpoint(out / "model.pt", model, meta["backbone"], meta["classes"],
                           PreprocessSpec.from_dict(meta["preprocess"]))
    summary = {"method": "AdaBN (moment-matched to the train images)", "images": int(len(target)),
               "found": found, "skipped": skipped, "source_images": int(len(source)),
               "folder": str(cfg.adapt.images), **summary, "wall_s": round(time.perf_counter() - t0, 1)}
    path = write_json(out / "adapt.json", summary)
    manifest.record_stage("adapt", {"checkpoint": ckpt, "summary": path}, summary)
    console.print(f"adapt: {summary['layers']} batch-norm layers re-estimated (mean shift {summary['mean_shift']:.3f} "
                  f"of a standard deviation) in {summary['wall_s']:.0f} s")
    return ckpt
