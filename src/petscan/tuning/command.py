"""`make tune`: run or resume the Optuna study over the head's training recipe.

Reads the params sections `tune` (search space, objective, trials, storage, pruner),
`train`, `model`, `data` and `mlflow`, plus `split.out_dir` and `featurize.out_dir`: every
trial trains the dense head on the cached features (data/features/{train,val}.npy, made by
`dvc repro featurize`) with the `train` stage's recipe and the trial's values.

The study is stored at the repository root (tune/optuna.db; tune/optuna.journal with
--workers > 1; or --storage URL), so running it again resumes it: `tune.n_trials` (or
--trials) is the study's total of COMPLETE + PRUNED trials. Ctrl-C keeps every finished
trial. Writes tune/best_params.yaml, tune/trials.csv, tune/summary.json and
tune/plots/*.png, and logs one MLflow parent run with a child run per trial. --apply
writes the best values into params.yaml (comments kept) for `dvc repro`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from petscan.params.loading import load_sections, repo_root, stage_parser
from petscan.params.schema import validate
from petscan.tuning.storage import check_driver, make_storage, resolve_storage, storage_label
from petscan.utils import errors, logs

if TYPE_CHECKING:
    from petscan.params.learning import TuneParams
    from petscan.params.loading import StageParams

# the sections this stage reads, plus the two folders of the feature cache
SECTIONS = ("tune", "train", "model", "data", "mlflow", "split.out_dir", "featurize.out_dir")
STORAGE_ENV = "PETSCAN_TUNE_STORAGE"  # the storage URL, kept off the command line
EXIT_INTERRUPTED = 130  # Ctrl-C, as the shell reports a SIGINT


def with_command_line(tune: TuneParams, **given: Any) -> TuneParams:
    """`tune` with the command line's values (`n_trials=`, `storage=`, ...; None: not given),
    checked by the schema like params.yaml (`ParamsError` naming the command line)."""
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return tune
    values = {"tune": {**tune.model_dump(), **given}}
    return validate(values, "the command line", across_sections=False).tune


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = stage_parser(__doc__)
    parser.add_argument("--trials", type=int, help="total trial target (default tune.n_trials)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--storage",
        default=os.environ.get(STORAGE_ENV) or None,
        help=f"Optuna storage URL or journal file (tune.storage); a URL with a password is "
        f"better passed in ${STORAGE_ENV}, which other users cannot read in `ps`",
    )
    parser.add_argument("--study", help="study name (default tune.study_name)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after N seconds")
    parser.add_argument("--apply", action="store_true", help="write the best values into --params")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--show-storage", action="store_true", help="print the storage (password masked), exit"
    )
    parser.add_argument(
        "--dashboard", action="store_true", help="serve optuna-dashboard on the study's storage"
    )
    parser.add_argument("--host", default="127.0.0.1", help="--dashboard: address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="--dashboard: port")
    return parser.parse_args(argv)


def storage_url(params: StageParams, args: argparse.Namespace) -> str:
    """The study's storage: `--storage`, else `tune.storage`, else the default file."""
    tune = with_command_line(params.tune, storage=args.storage)
    return resolve_storage(tune, repo_root(), max(1, args.workers))


def show_storage(params: StageParams, args: argparse.Namespace) -> int:
    """Print the study's storage, password masked; no TensorFlow is loaded."""
    print(storage_label(storage_url(params, args)).removeprefix("journal:"))
    return 0


def dashboard(params: StageParams, args: argparse.Namespace) -> int:
    """optuna-dashboard in this process: the storage URL (maybe with a password) never
    becomes a command-line argument that other users can read in `ps`."""
    import optuna_dashboard  # here: importing it takes 3.8 s, and only --dashboard needs it

    from petscan.serving import listen

    url = storage_url(params, args)
    listen.warn_if_exposed("tune", args.host, "--host", "optuna-dashboard (every trial)")
    print(f"optuna-dashboard on {storage_label(url)}: http://{args.host}:{args.port}/")
    optuna_dashboard.run_server(make_storage(url), host=args.host, port=args.port)
    return 0


@errors.reports_user_errors("tune")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = load_sections(SECTIONS, args.params)
    logs.setup(args.verbose)
    if args.show_storage:
        return show_storage(params, args)
    if args.dashboard:
        return dashboard(params, args)
    check_driver(storage_url(params, args))  # one line now, not after TensorFlow and the data
    logs.import_tensorflow()
    from petscan.tuning.run import run_tune  # here: TensorFlow takes ~5 s to load

    try:  # a problem with params, data or the stored study is a UserError: one line, exit 1
        summary = run_tune(
            params,
            repo_root(),
            trials=args.trials,
            workers=args.workers,
            storage=args.storage,
            study_name=args.study,
            timeout_s=args.timeout,
            apply=args.apply,
            params_path=args.params,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            "tune: stopped; every finished trial is kept in the storage and tune/ holds the "
            "outputs so far. Run `make tune` again to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(describe(summary))
    return 0


def describe(summary: dict) -> str:
    trials = summary["trials"]
    lines = [
        f"tune: study {summary['study_name']!r}: {trials['complete']} complete, "
        f"{trials['pruned']} pruned, {trials['fail']} failed (target {summary['n_trials_target']})"
    ]
    if "best_value" in summary:
        lines.append(
            f"best {summary['objective']} = {summary['best_value']:.4f} (trial "
            f"{summary['best_trial']}) -> tune/best_params.yaml"
        )
    if summary.get("best_params_refused"):
        lines.append(f"best params not written: {summary['best_params_refused']}")
    if summary.get("random_init"):
        lines.append("RANDOM-INIT backbone (not RadImageNet): these numbers demo the pipeline only")
    for note in summary.get("plot_notes", []):
        lines.append(f"plot {note}")
    for key, (old, new) in summary.get("applied", {}).items():
        lines.append(f"applied {key}: {old} -> {new}")
    if "applied" in summary and not summary["applied"]:
        lines.append("params.yaml already holds the best values")
    lines.append(
        f"storage {summary['storage']}; MLflow parent run {summary['mlflow_parent_run_id']}"
    )
    return "\n".join(lines)
