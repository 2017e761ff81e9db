import errno
import os

import pytest

from pipeline.errors import FileSystemError, from_os_error


@pytest.mark.parametrize("err, fragment, fix", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/model.onnx"), "/out/model.onnx: No space left", "free space"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "a write: No space left", "free space"),  # onnx.save: no path
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), "a write: Read-only file system", "writable filesystem"),
    (NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), "/etc/hosts/out"), "/etc/hosts/out", "a file stands"),
    (OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a", None, "/b"), "/a -> /b", "check the path"),  # a rename
])
def test_an_os_error_of_the_machine_is_one_line_with_the_path_and_a_fix(err, fragment, fix):
    user = from_os_error(err)
    assert isinstance(user, FileSystemError) and user.exit_code == 2
    assert fragment in user.problem and fix in user.fix


@pytest.mark.parametrize("err", [OSError("no errno"), OSError(errno.EBADF, os.strerror(errno.EBADF))])
def test_an_os_error_without_a_path_is_a_bug_not_the_users(err):
    assert from_os_error(err) is None


def test_a_checkpoint_that_does_not_fit_on_the_disk_is_a_full_disk(tmp_path, monkeypatch):
    """torch's zip writer reports ENOSPC as RuntimeError("[enforce fail at inline_container.cc] ...")."""
    import torch

    from pipeline import torch_model
    from pipeline.preprocess import PreprocessSpec

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
