"""`petscan <command>`: the project's commands outside the DVC stages."""

from __future__ import annotations

import importlib
import sys

# command -> (module, help); each module has `main(argv: list[str] | None) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("petscan.synthetic", "generate the synthetic PET demo data set"),
    "contact-sheet": ("petscan.contact_sheet", "write a PNG with a few images per class"),
    "predict": ("petscan.predict", "class probabilities for an image file or folder"),
    "serve": ("petscan.serve", "MLflow's scoring server for a registered model (make serve)"),
    "app": ("petscan.app", "the web page: drop images, see probabilities and Grad-CAM (make app)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: petscan <command> [--help]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<14} {text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"petscan: unknown command {name!r}; see `petscan --help`", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
