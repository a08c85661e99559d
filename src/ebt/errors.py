"""User-facing errors. The CLI prints their message and exits non-zero, without a traceback.

Raise them for anything a user can fix: bad configuration, missing or unusable data, a corrupt
checkpoint. Messages name the field, the value that was given and what is allowed.
"""


class EBTError(Exception):
    """Base class of every error the CLI reports as a one-line message.

    `field`: the API field the error is about, when there is one (a `ThinkingOptions` field such
    as "steps", a config key such as "think.step_size", a keyword such as "precision"). Library
    code names fields in the API's words; the command line maps `field` to its own flag.
    """

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(EBTError):
    """An unknown preset, an unknown override key, or a value of the wrong type or range."""


class DataError(EBTError):
    """Data that cannot be used: a missing path, an empty corpus, one shorter than the context."""


class CheckpointError(EBTError):
    """A run directory that is missing files, is corrupt, or does not match its config."""


class ThinkingDiverged(EBTError):
    """∇_y E became NaN or Inf during thinking (usually α is too large for this model)."""


class TrainingDiverged(EBTError):
    """The training loss, gradient norm, weights or validation loss became NaN or Inf. Training
    stops before writing anything from that point, so the last good checkpoint is kept."""


class Interrupted(EBTError):
    """A command stopped on SIGINT or SIGTERM: training after saving a checkpoint it can resume
    from, `prepare-data` after removing what it had written.

    `exit_code` is what a shell reports for the signal: 128 + its number (SIGINT 130, SIGTERM 143).
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
