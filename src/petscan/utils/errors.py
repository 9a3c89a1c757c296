"""Problems the user can fix, and the one way every command reports them.

The exit codes of every command (`petscan <command>` and the DVC stages), written once here:

- 0 (`EXIT_OK`): done.
- 1 (`EXIT_USER_ERROR`): a problem with the user's data, params, files or machine (a
  `UserError`, or a full disk or read-only folder while writing outputs): ONE line
  `<prog>: error: <message>` on stderr, naming the file or value and the fix; no traceback.
- 2 (`EXIT_USAGE`): a wrong command line (argparse prints its usage and the problem; `petscan`
  says so of an unknown command). Never for a failure at run time.
- 70 (`EXIT_BUG`, `EX_SOFTWARE` of sysexits.h): any other exception is a bug in petscan:
  its traceback, then one line saying it is a bug, so it can go into a bug report.
- Ctrl-C is not caught (Python's own exit for SIGINT); `tune` says how to resume, exit 130.

The `UserError`s: `ParamsError`, `MissingInputError`, `BadInputError` and `DiskFullError`
(here), and those of the packages that meet the user's files: `data.index.DataError`,
`data.images.ImageError`, the weights' `WeightsError`, `tuning.storage.StorageError`,
`serving.loading.ModelNotFoundError`.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_BUG = 70
# OSErrors of the machine, not of petscan, while writing outputs: the user frees space
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class UserError(Exception):
    """A problem with the user's data, params or files; the message says how to fix it."""


class ParamsError(UserError, ValueError):
    """`params.yaml` (or a `-S` override written into it) does not fit the schema."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file the command needs is not there (an earlier stage did not run)."""


class BadInputError(UserError, ValueError):
    """An input file exists but cannot be used (corrupt, truncated, the wrong kind)."""


class DiskFullError(UserError):
    """An output could not be written: the disk or the quota is full, or it is read-only."""


def is_disk_full(err: BaseException) -> bool:
    """An OSError of a full disk or quota, or a read-only file system."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


def disk_full_message(err: OSError, path: str | Path | None = None) -> str:
    """One line naming the file that could not be written and how to make room."""
    where = path or err.filename
    what = f"cannot write {where}" if where else "cannot write the outputs"
    reason = os.strerror(err.errno or 0)  # h5py's own strerror spans lines
    if err.errno == errno.EROFS:
        return f"{what}: {reason}; choose a writable folder (or remount it read-write) and rerun"
    return f"{what}: {reason}; free space on that disk (or raise your quota) and rerun"


def reports_user_errors(prog: str) -> Callable:
    """Decorate a `main(argv) -> int` with the exit codes above: a `UserError` (or a disk
    full while writing) becomes one line on stderr and exit 1; any other exception (a bug)
    prints its traceback and a last line saying so, and exits with `EXIT_BUG`.
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
            except OSError as err:
                if not is_disk_full(err):
                    return _report_bug(prog)
                print(f"{prog}: error: {disk_full_message(err)}", file=sys.stderr)
                return EXIT_USER_ERROR
            except Exception:
                return _report_bug(prog)

        return wrapped

    return decorate


def _report_bug(prog: str) -> int:
    """Print the exception being handled with its traceback; `EXIT_BUG`."""
    traceback.print_exc()
    print(
        f"{prog}: internal error: this is a bug in petscan (exit code {EXIT_BUG}); please "
        "report it with the traceback above",
        file=sys.stderr,
    )
    return EXIT_BUG
