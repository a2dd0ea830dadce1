"""The errors acd raises for user mistakes.

Every user-facing failure is an `AcdError` whose message is one line that says what is wrong
and, where possible, what to do; the command line prints that line and exits non-zero.
"""


class AcdError(Exception):
    """A mistake in the user's input or environment, reported as one line, not a traceback."""


class TaskError(AcdError):
    """A task file, prompt or answer that cannot be used with the model at hand."""


class AcdWarning(UserWarning):
    """Something the user should know that does not stop the run; the command line prints it as
    one ``warning:`` line."""
