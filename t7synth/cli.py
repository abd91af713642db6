"""Helpers shared by the ``python -m t7synth.<command>`` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from t7synth.errors import UserError

#: Exit status for a user's mistake (argparse uses 2 for bad arguments too).
USER_ERROR_EXIT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with bad arguments raised as a :class:`UserError`.

    Plain argparse prints the whole usage before its error; every t7synth command
    instead ends a user's mistake with the same single ``error:`` line and exit status
    2 (``--help`` still prints the usage).
    """

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main`` and turn a :class:`UserError` into one line on stderr.

    Anything else is a bug in t7synth and keeps its traceback.

    Args:
        main: the command's function; it returns an exit status or ``None`` for 0.
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status to hand to ``sys.exit``.
    """
    try:
        status = main(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)


def console_entry(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[], None]:
    """A ``[project.scripts]`` entry point for a command's ``main`` (``t7synth-fit``, ...).

    Console scripts call their function without arguments and print a traceback for
    any exception; wrapping ``main`` in :func:`run_main` gives them the same one-line
    errors and exit statuses as ``python -m t7synth.<command>``.
    """

    def entry() -> None:
        sys.exit(run_main(main))

    return entry
