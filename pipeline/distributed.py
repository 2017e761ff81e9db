"""The fine-tune on several processes, as `torchrun` starts them (DDP: gloo on CPUs, NCCL on CUDA).

    torchrun --standalone --nproc_per_node=4 -m edgepipe finetune CONFIG      # one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29400 -m edgepipe finetune CONFIG           # on each node

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; edgepipe starts no process itself.
How the processes share the work, and why the result is the 1-process one:
- Sampler: every rank draws the same permutation per epoch from the shared seed and takes its
  slice (rank, rank + world, ...) of each *global* batch of `finetune.batch_size`, so the images
  of a step and their augmentation are those of a 1-process run at the same batch; DDP sums the
  gradients of the slices, and the loss is scaled so that the sum is the global batch's mean.
- Decisions (epochs that fit the budget, early stopping, the re-plan after epoch 1) are made on
  rank 0's clock and val accuracy summed over all ranks, so every rank takes the same path.
- One writer: rank 0 holds the build lock, writes the checkpoint (the unwrapped model, the same
  format as a 1-process run), metrics, snapshots and the manifest; the other ranks write nothing.
Batch norm: frozen on CPUs (no batch statistics to share; `batchnorm: train` on CPUs is refused
under torchrun); trained on CUDA through SyncBatchNorm. A global batch smaller than the number of
processes (a last partial batch) is skipped, as a 1-process run skips a batch of one image.
Multi-node: the output dir must be on a filesystem every node sees (rank 0 may be on any node,
and on another one after a restart).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (all of it in a 1-process run)."""
        return idx[self.rank::self.world]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (the values themselves in a 1-process run)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch_dist.all_reduce(t)
        return t.tolist()

    def from_main(self, value: float) -> float:
        """Rank 0's value on every rank: clocks and timings, so every rank plans alike."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch_dist.broadcast(t, src=0)
        return float(t.item())


def from_env() -> Ranks:
    """The ranks torchrun announced (a plain 1-process run when it did not start this process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        from edgepipe.core.errors import ConfigError

        raise ConfigError("WORLD_SIZE / RANK / LOCAL_RANK are not integers",
                          "start distributed fine-tunes with torchrun, which sets them") from None
    return Ranks(rank, world, local) if world > 1 else Ranks()


def init(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (once per process) and return this rank's device."""
    if not ranks.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        # NCCL for the gradients on GPUs; gloo for the small CPU tensors of Ranks.sum / from_main
        torch_dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return device


def check_recipe(ranks: Ranks, device: torch.device, batch_size: int, batchnorm: str) -> None:
    """What a distributed fine-tune cannot do, refused before any work."""
    if not ranks.enabled:
        return
    from edgepipe.core.errors import ConfigError

    if batch_size < ranks.world:
        raise ConfigError(f"finetune.batch_size {batch_size} is smaller than the {ranks.world} torchrun processes",
                          f"raise finetune.batch_size to {ranks.world} or more (it is the global batch)")
    if batchnorm == "train" and device.type != "cuda":
        raise ConfigError("finetune.batchnorm: train under torchrun on CPUs: each process would keep its own "
                          "batch statistics", "set finetune.batchnorm: frozen (the CPU default) or run on CUDA GPUs")


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
    """The module to train with: DDP over the ranks (which starts every rank from rank 0's weights)."""
    if not ranks.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm and device.type == "cuda":
        # timm's converter: torch's own would replace BatchNormAct2d and drop its activation
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def quiet_unless_main(ranks: Ranks) -> None:
    """Only rank 0 prints: N copies of every progress bar help nobody."""
    if not ranks.main:
        from edgepipe.core.console import console

        console.quiet = True
