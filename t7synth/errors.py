"""The one exception type for mistakes a user can make."""


class UserError(Exception):
    """A problem with the user's input: a path, a file, a config key or value.

    Command-line entry points catch it and print its message as one line, with a
    non-zero exit and no traceback (see :func:`t7synth.cli.run_main`). Messages should
    name the offending file, key or value and, where it helps, say what is valid.
    """
