"""Every error recospark raises on purpose, and the exit codes the console command maps them to.

`UserError` and its subclasses are problems a user can fix (a key, a path, a stage to run first):
the console prints their one-line message and exits with `EXIT_USER_ERROR` (2), which the Airflow
DAG treats as permanent. `Retryable` errors (no executor registered in time, another run holding an
output) exit with `EXIT_RETRYABLE` (1): a later attempt can succeed. Anything else is a bug or an
infrastructure failure and keeps its traceback.

This module imports nothing from recospark, so any module can raise these without pulling in
configuration or Spark.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_RETRYABLE = 1

__all__ = [
    "EXIT_RETRYABLE",
    "EXIT_USER_ERROR",
    "ConfigError",
    "DataQualityError",
    "EvaluateError",
    "ExecutorsUnavailable",
    "LayoutError",
    "OutputError",
    "PrerequisiteError",
    "PublishError",
    "Retryable",
    "SourceError",
    "SplitError",
    "UserError",
]


class UserError(Exception):
    """An error the user can fix (a key, a path, a stage to run first): one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A configuration problem a user can fix by editing one key or file."""


class SourceError(UserError, RuntimeError):
    """The data source cannot be found, fetched or trusted; the message says which setting to change."""


class LayoutError(UserError, ValueError):
    """The source folder is not a MovieLens layout recospark knows, or a required file is missing or empty."""


class DataQualityError(UserError):
    """The input parsed, but too little of it is usable to publish (the message says how much)."""


class SplitError(UserError):
    """The configured split cannot be made from the published ratings."""


class OutputError(UserError, RuntimeError):
    """An output cannot be read or written for a reason the user can fix; the message names the path."""


class PrerequisiteError(OutputError):
    """A stage needs an output that no earlier stage has published; the message names that stage."""


class EvaluateError(PrerequisiteError):
    """The published inputs cannot be evaluated as configured (the message names the key)."""


class Retryable(RuntimeError):
    """A failure a later attempt can get past (exit code 1): the message says what was busy."""


class ExecutorsUnavailable(Retryable):
    """No executor registered in time: the executors asked for fit on no worker, or the cluster is full."""


class PublishError(RuntimeError):
    """The file system refused a publishing step (a rename); not a user error."""
