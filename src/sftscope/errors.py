"""One error type for everything a user can fix: the CLI prints it as one line."""


class SftscopeError(Exception):
    """A problem with the user's input, files or environment, stated in one line.

    The CLI prints ``str(error)`` and exits with status 2; ``--debug`` shows the
    traceback. Library code raises it instead of letting a deep stack trace
    surface for bad input.
    """
