"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (path, config, dataset, checkpoint) that they can fix.

    The message must name the problem and the fix in one line.
    """


class NonFiniteLossError(UserError):
    """Training produced a NaN or inf loss; the last good checkpoint was kept."""


def one_line_message(exc: BaseException) -> str:
    """The user-facing line of ``exc``.

    PyTorch's DataLoader re-raises an error from a worker process as the same type with the whole worker
    traceback as its message ("Caught UserError in DataLoader worker process 0. Original Traceback ...");
    this returns the original one-line message from its last line. Other messages are returned as they are.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), text)
    name, sep, message = last.partition(": ")
    return message.strip() if sep and name.replace(".", "").replace("_", "").isalnum() else last.strip()
