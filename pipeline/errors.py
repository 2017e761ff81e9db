"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""


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
