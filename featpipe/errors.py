"""featpipe's exceptions: one base class, one message style.

Every message is one line: what was wrong, the value that was given, and what
to do. Library code raises these; only the CLI turns them into exit codes
(``exit_code`` 2 for bad arguments, 1 for failures).
"""


class FeatpipeError(Exception):
    """Base class for every error a user can cause or fix."""

    exit_code = 1


class UsageError(FeatpipeError, ValueError):
    """A bad argument: unknown model or layer, missing input, bad option value."""

    exit_code = 2


class WeightsError(FeatpipeError):
    """Weights could not be found or do not fit the model."""

    exit_code = 2


class FormatError(FeatpipeError):
    """A feature file that is not one, or of a format version this featpipe does not read."""

    exit_code = 2


class RunConflictError(FeatpipeError):
    """An output that another process is writing, or an existing run with another configuration."""

    exit_code = 2


class TooManyFailuresError(FeatpipeError):
    """More images failed than --max-failures allows; finished partitions are kept."""

    exit_code = 1
