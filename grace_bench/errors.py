"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (path, config, dataset, checkpoint) that they can fix.

    The message must name the problem and the fix in one line.
    """


class NonFiniteLossError(UserError):
    """Training produced a NaN or inf loss; the last good checkpoint was kept."""
