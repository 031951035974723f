class LabkitError(Exception):
    """An expected failure: the CLI prints its message (what is wrong and how to fix it) and
    exits with `code`. Anything else is a bug and gets a traceback."""

    code = 1
