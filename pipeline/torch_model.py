"""The fine-tuned float model on disk and in memory: checkpoint format and batched inference."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import torch

from edgepipe.core.errors import MissingArtifactError
from edgepipe.core.files import atomic_output
from edgepipe.core.preprocess import PreprocessSpec
from edgepipe.pipeline.backbones import create_model
from edgepipe.targets.base import Runner

CHECKPOINT_FORMAT = "edgepipe-checkpoint/1"


def save_checkpoint(path: Path, model: torch.nn.Module, backbone: str, classes, spec: PreprocessSpec) -> Path:
    payload = {"format": CHECKPOINT_FORMAT, "backbone": backbone, "classes": list(classes),
               "preprocess": spec.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_output(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError:  # torch's zip writer reports a full disk as "enforce fail ... file write failed"
            st = os.statvfs(tmp.parent)
            if st.f_bavail * st.f_frsize < 16 * 2**20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise
    return path


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's payload: backbone, classes, preprocess, state_dict. weights_only=True: a
    checkpoint cannot run code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        raise MissingArtifactError(f"cannot read checkpoint {path} ({type(e).__name__})",
                                   "rerun `edgepipe finetune` with this config") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise MissingArtifactError(f"{path} is not an edgepipe checkpoint", "rerun `edgepipe finetune` with this config")
    return payload


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    """Model in eval mode + its metadata."""
    payload = read_checkpoint(path)
    model, _ = create_model(payload["backbone"], len(payload["classes"]), pretrained=False)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        from edgepipe.core.errors import ConfigError

        raise ConfigError("finetune.device is cuda but no CUDA GPU is visible", "set finetune.device: auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@torch.no_grad()
def torch_logits(model: torch.nn.Module, rgb8: np.ndarray, spec: PreprocessSpec,
                 device: torch.device | None = None, batch_size: int = 64) -> np.ndarray:
    """fp32 logits for NHWC uint8 images, preprocessed by the shared numpy path."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(rgb8), batch_size):
        x = torch.from_numpy(spec.normalize(rgb8[i:i + batch_size])).to(device)
        out.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)



class TorchRunner(Runner):
    """The float reference model behind the same runner lifecycle as the targets."""

    def __init__(self, model: torch.nn.Module, threads: int, name: str = "torch-fp32"):
        super().__init__(name, threads)
        self.model = model

    def activate_impl(self) -> None:
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.model = self.model.cpu().eval().to(memory_format=torch.channels_last)

    @torch.no_grad()
    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    def deactivate_impl(self) -> None:
        torch.set_num_threads(self._threads_before)
