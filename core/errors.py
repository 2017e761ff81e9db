"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""

import errno


class EdgepipeError(Exception):
    """A problem with the user's input or environment: says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem} (fix: {fix})")


class ConfigError(EdgepipeError):
    """The build config is missing, malformed or inconsistent."""


class DataError(EdgepipeError):
    """The dataset cannot be used as given."""


class InputError(EdgepipeError):
    """A batch given to a runner is not what the model takes (shape, dtype, NaN / Inf): nothing ran."""


class MissingArtifactError(EdgepipeError):
    """A stage needs the output of an earlier stage that is not there."""


class ImageError(EdgepipeError):
    """An input image cannot be read or has a pixel format the model's preprocessing cannot take."""


class BundleError(EdgepipeError):
    """A deploy bundle is missing, incomplete or changed since the build wrote it: it must not run."""


class BackendMissing(EdgepipeError):
    """The runtime a bundle needs (onnxruntime, openvino, tensorrt) is not installed on this machine."""


class EngineSkipped(BackendMissing):
    """`edgepipe engine` on a machine without TensorRT: nothing was built. Its own exit code lets a
    fleet script tell "not a Jetson" from a real failure."""

    exit_code = 4


class CheckFailed(EdgepipeError):
    """A built artifact failed a check (parity, gates): the build ran but must not ship."""

    exit_code = 3


class FileSystemError(EdgepipeError):
    """The operating system refused a read or write (full disk, read-only, a file where a folder
    should be): the environment's problem, not edgepipe's, so exit 2 with the path and the fix."""


_FIXES = {
    errno.ENOSPC: "free space on that disk and rerun: finished files are kept and the build resumes",
    errno.EDQUOT: "free space within your quota and rerun: finished files are kept and the build resumes",
    errno.EROFS: "choose an output path on a writable filesystem",
    errno.EACCES: "make the path writable for this user, or choose another path",
    errno.EPERM: "make the path writable for this user, or choose another path",
    errno.ENOENT: "create the missing folder first, or correct the path",
    errno.ENOTDIR: "a file stands where a folder is needed: correct the path or move the file",
    errno.EEXIST: "something already exists at that path: remove it or choose another path",
    errno.EISDIR: "a folder stands where a file is needed: correct the path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


# Whatever path they happen on, these are the machine's state, never a bug.
_ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def from_os_error(e: OSError) -> EdgepipeError | None:
    """The one-line error for an OSError that names a path or is a full or read-only disk (None
    for any other: a bug)."""
    if e.errno is None or (e.filename is None and e.errno not in _ENVIRONMENT):
        return None
    where = "a write" if e.filename is None else e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return FileSystemError(f"{where}: {e.strerror or errno.errorcode.get(e.errno, e.errno)}",
                           _FIXES.get(e.errno, "check the path, its permissions and the free disk space"))
