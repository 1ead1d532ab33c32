"""The one exception type users see: a problem with their input, said in one line."""


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) at a point it saved; the message says how to resume."""


class UserError(Exception):
    """Bad input or state the user can fix; the CLIs print it as one line and exit non-zero."""
