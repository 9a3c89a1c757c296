"""Problems the user can fix, and the one way every command reports them.

A `UserError` is a problem with the user's data, params or files: the command prints
`<prog>: error: <message>` on stderr and exits with 1, without a traceback. Any other
exception is a bug: it propagates with its traceback (exit code 1 from Python, or the
signal's), so it can go into a bug report. `DataError`, `ImageError`, `WeightsError` and
`ParamsError` are `UserError`s.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 1


class UserError(Exception):
    """A problem with the user's data, params or files; the message says how to fix it."""


class ParamsError(UserError, ValueError):
    """`params.yaml` (or a `-S` override written into it) does not fit the schema."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file the command needs is not there (an earlier stage did not run)."""


class BadInputError(UserError, ValueError):
    """An input file exists but cannot be used (corrupt, truncated, the wrong kind)."""


def reports_user_errors(prog: str) -> Callable:
    """Decorate a `main(argv) -> int`: a `UserError` becomes one line on stderr and exit 1.

    Other exceptions (bugs) are not touched, so their traceback is printed.
    """

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UserError as err:
                # a ParamsError holds one problem a line: each gets the prefix
                lines = str(err).splitlines() if isinstance(err, ParamsError) else [str(err)]
                for line in lines:
                    print(f"{prog}: error: {line}", file=sys.stderr)
                return EXIT_USER_ERROR

        return wrapped

    return decorate
