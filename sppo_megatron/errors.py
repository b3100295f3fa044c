"""User-facing errors: bad input gets one clear line and exit code 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user (config, files, paths). The CLI prints the message and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """One or more problems in the configuration; the message has one line per problem.

    `candidate`: the merged config the problems were found in, when it could be built (keys and
    types right, values wrong), so the checks of its sound groups can still run and report theirs
    in the same message."""

    def __init__(self, message: str, candidate: object = None) -> None:
        super().__init__(message)
        self.candidate = candidate


class DataError(UserError):
    """A prompt dataset that cannot be used; the message names the file and the row."""


class RunStopped(UserError):
    """The run cannot go on for a reason that is not bad input (a failing reward function, a
    dead helper process): one clear line, exit 1."""

    exit_code = 1


class RolloutEngineDied(RunStopped):
    """A rollout engine's process is gone (killed, crashed): one line naming the engine and its log, exit 1."""


class TrainingDiverged(RunStopped):
    """The run stopped itself (e.g. too many non-finite steps in a row): one clear line, exit 1."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, for one-line user errors."""
    text = str(e).strip().splitlines()
    return text[0] if text else ""
