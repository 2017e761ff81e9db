import errno
import os

import pytest

from edgepipe.core.errors import FileSystemError, from_os_error


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
