"""The one base class of errors a user can fix: the CLI prints them as one line, without a traceback.

Every module raises its own subclass (a config error, a task file error, a tracking error...) so
callers can catch what they handle, and `itstudy.cli` catches `UserError` for all of them.
"""


class UserError(ValueError):
    """A problem in what the user gave (a file, a field, a name, a store): the message says what and where."""
