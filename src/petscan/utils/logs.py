"""Keep the console to what a user needs: TensorFlow's start-up lines hidden by default.

TensorFlow prints its C++ and absl start-up notices ("All log messages before
absl::InitializeLog()", oneDNN, CPU features) when it is imported, whatever
`TF_CPP_MIN_LOG_LEVEL` says about later messages, and ERROR lines that are no error later
(`setup` sets the level that hides those). Every command calls `setup()` before
anything imports TensorFlow, and `import_tensorflow()` where it needs it: the start-up
notices are dropped, anything else TensorFlow prints while importing is passed on.
`--verbose` (or the environment variable `PETSCAN_VERBOSE=1`, for `dvc repro`) brings
everything back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

VERBOSE_ENV = "PETSCAN_VERBOSE"
# Start-up notices of TensorFlow's native libraries; nothing a user can act on.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations"
    r"|cpu_feature_guard|To enable the following instructions"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
    r"|Could not find cuda drivers|TF-TRT Warning"
)
_state = {"verbose": False}


def is_verbose() -> bool:
    return _state["verbose"]


def setup(verbose: bool = False) -> bool:
    """Set TensorFlow's log level before it is imported; returns the verbosity in effect.

    Quiet (the default): TensorFlow's C++ log lines up to ERROR are hidden
    (`TF_CPP_MIN_LOG_LEVEL=3`; FATAL still shows). Level 2, which the Makefile and many
    shells set, is not enough: TensorFlow logs things a user cannot act on as ERROR, long
    after the import (`E0000 ... node_def_util.cc] NodeDef mentions attribute ... Unknown
    attributes will be ignored`, while building a graph). An environment that asks for more
    (0 or 1) keeps it. Verbose: everything is shown. Failures still reach the user as Python
    exceptions; these lines were never the message.
    """
    verbose = bool(verbose) or os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")
    _state["verbose"] = verbose
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    elif os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() not in ("0", "1"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return verbose


def import_tensorflow() -> None:
    """Import TensorFlow with its start-up notices dropped (all of them kept when verbose)."""
    with quiet_startup():
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def quiet_startup() -> Iterator[None]:
    """Drop TensorFlow's start-up notices from what is printed to stderr inside the block
    (e.g. importing a module that imports TensorFlow); everything else is passed on."""
    if "tensorflow" in sys.modules or is_verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if not STARTUP_NOISE.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


@contextlib.contextmanager
def legacy_h5() -> Iterator[None]:
    """Silence Keras' "HDF5 is legacy" warnings where the project uses `.h5` on purpose
    (backbone weights are stored in the RadImageNet file's own format)."""
    absl = logging.getLogger("absl")
    level = absl.level
    if not is_verbose():
        absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)
