"""The one exception type users see: a problem with their input, said in one line."""


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) at a point it saved; the message says how to resume."""


class UserError(Exception):
    """Bad input or state the user can fix; the CLIs print it as one line and exit non-zero."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut to `limit` characters, or its type's name where it says nothing:
    how a library's long message (Orbax, tfds, XLA) becomes part of one line."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
