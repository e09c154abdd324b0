"""The one exception type users see: a one-line message, exit code 1, no traceback."""


class UserError(Exception):
    """A problem the user can fix (bad path, bad model file, bad flag value).

    The CLI prints ``nomoat: error: <message>`` and exits 1; ``--debug`` shows the traceback.
    The message should say what is wrong and what to do next, on one line.
    """


class ModelError(UserError):
    """A model file that is missing, not a GGUF, truncated or corrupt, or unusable."""
