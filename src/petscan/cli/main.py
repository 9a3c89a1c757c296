"""`petscan <command>`: the project's commands outside the DVC stages."""

from __future__ import annotations

import importlib
import sys

from petscan.utils import errors, logs

# command -> (module, help); each module has `main(argv: list[str] | None) -> int`. A module
# is imported only when its command runs: most load TensorFlow (about 5 s on 2 cores), which
# `petscan --help` and `petscan generate` do not need.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("petscan.demo.generate", "generate the synthetic PET demo data set"),
    "pretrain-demo": ("petscan.demo.pretrain", "pretrain the demo backbone on a synthetic corpus"),
    "contact-sheet": ("petscan.data.contact_sheet", "write a PNG with a few images per class"),
    "predict": ("petscan.serving.predict", "class probabilities for an image file or folder"),
    "explain": ("petscan.cli.explain", "Grad-CAM heatmaps of the predictions, as overlay PNGs"),
    "compare": ("petscan.cli.compare", "is model A's difference from B real? paired intervals"),
    "serve": (
        "petscan.serving.serve",
        "MLflow's scoring server for a registered model (make serve)",
    ),
    "app": (
        "petscan.serving.app.server",
        "the web page: drop images, see probabilities and Grad-CAM (make app)",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Exit codes, the same for every command and DVC stage (`petscan.utils.errors`): 0 success,
    1 a problem with the data, params, files or disk (one line on stderr), 2 a usage error
    (argparse), 70 a bug (its traceback, then one line saying it is a bug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    argv = argv[1:] if verbose else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: petscan [--verbose] <command> [--help]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<14} {text}")
        return errors.EXIT_OK if argv else errors.EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"petscan: unknown command {name!r}; see `petscan --help`", file=sys.stderr)
        return errors.EXIT_USAGE
    logs.setup(verbose)  # before any command imports TensorFlow
    return int(errors.reports_user_errors(f"petscan {name}")(_run)(name, rest) or 0)


def _run(name: str, argv: list[str]) -> int:
    """Import the command's module (an import error is a bug too: exit 70) and run it."""
    with logs.quiet_startup():
        module = importlib.import_module(COMMANDS[name][0])
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
