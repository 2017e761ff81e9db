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


class MissingArtifactError(EdgepipeError):
    """A stage needs the output of an earlier stage that is not there."""


class CheckFailed(EdgepipeError):
    """A built artifact failed a check (parity, gates): the build ran but must not ship."""

    exit_code = 3
