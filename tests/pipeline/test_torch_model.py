import errno

import pytest
import torch

from edgepipe.core.errors import MissingArtifactError, from_os_error
from edgepipe.core.preprocess import PreprocessSpec
from edgepipe.pipeline.torch_model import load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for any code a hostile file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    path, marker = tmp_path / "model.pt", tmp_path / "pwned"
    torch.save({"format": "edgepipe-checkpoint/1", "backbone": "tf_efficientnet_lite0", "classes": ["a", "b"],
                "state_dict": {}, "extra": _Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(MissingArtifactError, match=r"cannot read checkpoint .*model.pt \(UnpicklingError\)"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_round_trip_and_truncation(tmp_path):
    model = torch.nn.Linear(2, 2)
    spec = PreprocessSpec(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    path = save_checkpoint(tmp_path / "model.pt", model, "tf_efficientnet_lite0", ("a", "b"), spec)
    payload = torch.load(path, weights_only=True)
    assert payload["classes"] == ["a", "b"] and torch.equal(payload["state_dict"]["weight"], model.weight)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MissingArtifactError, match="rerun `edgepipe finetune`"):
        load_checkpoint(path)


def test_a_checkpoint_that_does_not_fit_on_the_disk_is_a_full_disk(tmp_path, monkeypatch):
    """torch's zip writer reports ENOSPC as RuntimeError("[enforce fail at inline_container.cc] ...")."""
    from edgepipe.pipeline import torch_model

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(torch, "save", fail)
    monkeypatch.setattr(torch_model.os, "statvfs", lambda p: Full())
    with pytest.raises(OSError) as e:
        torch_model.save_checkpoint(tmp_path / "model.pt", torch.nn.Linear(2, 2), "x", ("a", "b"),
                                    PreprocessSpec(32, (0.5,) * 3, (0.5,) * 3))
    assert e.value.errno == errno.ENOSPC and from_os_error(e.value).fix.startswith("free space")
    assert list(tmp_path.iterdir()) == []  # no partial file under any name
