"""Epoch snapshots of the full fine-tune: a killed run (a build stopped by hand, a node lost
under torchrun, which then restarts every worker) resumes after its last finished epoch instead
of training from the start.

finetune/snapshot.pt holds everything the next epoch depends on: weights, optimizer and schedule
state, the random streams, the best epoch so far, the plan and the budget left. It is written by
rank 0 after each epoch, tagged with the stage's input key (a snapshot of another config, dataset
or tool version is ignored), handed to every rank on resume, and deleted once the checkpoint is
written. It does not depend on the number of processes: a run may resume on another world size.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from edgepipe.core.console import console
from edgepipe.core.files import atomic_output
from edgepipe.pipeline.distributed import Ranks

SNAPSHOT_FORMAT = "edgepipe-finetune-snapshot/1"


def _plain(value):
    """The recipe as plain str / number / bool / None, dicts and lists (what weights_only loads)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump(mode="json"))
    return value


class Snapshots:
    def __init__(self, path: Path, key: str | None, ranks: Ranks, recipe: dict):
        # the recipe too: `device: auto` resolves to another profile on another machine, which the
        # stage key (the config as written) does not see
        self.path, self.key, self.ranks, self.recipe = path, key, ranks, _plain(recipe)

    def load(self) -> dict | None:
        """The snapshot to resume from on every rank (rank 0 reads it), or None."""
        snap = self._read() if self.ranks.main else None
        if self.ranks.enabled:
            import torch.distributed as torch_dist

            box = [snap]
            torch_dist.broadcast_object_list(box, src=0)
            snap = box[0]
        return snap

    def _read(self) -> dict | None:
        if self.key is None or not self.path.is_file():
            return None
        try:
            snap = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: train from the start, as without one
            console.print(f"[yellow]ignored {self.path} ({type(e).__name__}): training from the start")
            return None
        if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT or snap.get("key") != self.key \
                or snap.get("recipe") != self.recipe:
            console.print(f"[yellow]ignored {self.path}: it was written for other inputs; training from the start")
            return None
        left = "" if snap["budget_left_s"] is None else f"; {snap['budget_left_s']:.0f} s of the budget left"
        console.print(f"resuming the fine-tune after epoch {snap['epoch']} of {snap['epochs']} from {self.path}{left}")
        return snap

    def save(self, state: dict) -> None:
        if not self.ranks.main or self.key is None:
            return
        with atomic_output(self.path) as tmp:
            torch.save({"format": SNAPSHOT_FORMAT, "key": self.key, "recipe": self.recipe, **state}, tmp)

    def discard(self) -> None:
        if self.ranks.main:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
