"""Opening, resuming and running an Optuna study: the trial loop and its watchers.

The study is stored (see `storage`), so it resumes after a stop: `tune.n_trials` is
the study's total target of COMPLETE + PRUNED trials, not the count of one run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from petscan.handoff.records import WeightsInfo
from petscan.tuning.storage import (
    COUNTED,
    IN_FLIGHT,
    count_done,
    fail_stale_trials,
    heartbeat_interval,
    is_local_file_storage,
    make_pruner,
    make_sampler,
    make_storage,
    storage_label,
)
from petscan.utils.errors import BadInputError

if TYPE_CHECKING:
    from petscan.params.learning import TrainParams, TuneParams

log = logging.getLogger(__name__)


def max_steps(train: TrainParams, tune: TuneParams) -> int:
    """The most pruner steps a trial reports: epochs (a fixed `train.epochs` wins) x folds."""
    fixed = tune.space.get("train.epochs")
    epochs = fixed if isinstance(fixed, int) else train.epochs
    return epochs * max(1, tune.cv_folds)


def open_study(
    tune: TuneParams,
    storage: optuna.storages.BaseStorage | str,
    max_steps: int,
    worker: int = 0,
) -> optuna.Study:
    """Create or load the study; the sampler is seeded after seeing what is stored."""
    study = optuna.create_study(
        storage=storage,
        study_name=tune.study_name,
        direction=tune.direction,
        pruner=make_pruner(tune.pruner, max_steps),
        load_if_exists=True,
    )
    study.sampler = make_sampler(tune, worker, len(study.get_trials(deepcopy=False)))
    return study


def check_fingerprint(
    study: optuna.Study, tune: TuneParams, fingerprint: str, storage_url: str
) -> None:
    """A resumed study must keep its objective, CV setting and data; else a clear error."""
    expected = {"objective": tune.objective, "cv_folds": tune.cv_folds, "data": fingerprint}
    stored = {k: study.user_attrs.get(k) for k in expected}
    if all(v is None for v in stored.values()):
        for key, value in expected.items():
            study.set_user_attr(key, value)
        study.set_user_attr("space", tune.space)
        return
    diff = [k for k in expected if stored[k] != expected[k]]
    if diff:
        raise BadInputError(
            f"study {tune.study_name!r} in {storage_label(storage_url)} was run with "
            f"{ {k: stored[k] for k in diff} }, now { {k: expected[k] for k in diff} }: its values "
            "are not comparable; pass --study NEW_NAME (or delete the storage) to start afresh"
        )
    if study.user_attrs.get("space") != tune.space:
        log.warning("tune.space changed since study %r started; continuing", tune.study_name)
        study.set_user_attr("space", tune.space)


def resume_study(
    tune: TuneParams,
    storage_url: str,
    max_steps: int,
    fingerprint: str,
    on_failed: Callable[[FrozenTrial], None] | None = None,
) -> optuna.Study:
    """Open the study for the main process, check it matches, fail its stale trials (on a
    file; on a server the heartbeats do it, calling `on_failed`)."""
    study = open_study(tune, make_storage(storage_url, tune, on_failed), max_steps)
    check_fingerprint(study, tune, fingerprint, storage_url)
    stale = fail_stale_trials(study) if is_local_file_storage(storage_url) else []
    if stale:
        log.warning("trials %s were left RUNNING by a stopped process: marked FAIL", stale)
    return study


def record_backbone(study: optuna.Study, weights: WeightsInfo | None) -> None:
    """The backbone the cached features came from, as study user attributes (optuna-dashboard
    shows them): the `WeightsInfo` fields, e.g. `random_init` and `weights_label`."""
    for key, value in (weights.to_dict() if weights else {}).items():
        study.set_user_attr(key, value)


class FailureGuard:
    """Stops the study after `limit` failed trials in a row (a systematic error)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.streak = 0
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("surplus"):
            return  # not run: neither a failure nor a success
        self.streak = self.streak + 1 if trial.state == TrialState.FAIL else 0
        if self.limit > 0 and self.streak >= self.limit:
            self.tripped = True
            study.stop()


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    target: int,
    timeout_s: float | None,
    callbacks: Sequence[Callable] = (),
    max_failures: int = 5,
) -> FailureGuard:
    """Run trials until `target` COMPLETE + PRUNED trials are stored (or the timeout).

    A trial running in another worker counts towards the target, so the workers together
    stop at it (not one trial past it each). On a database server a worker whose share is
    done waits while others' trials run: when a machine is lost, Optuna's heartbeat check
    fails its trial and enqueues the retry (see `storage.make_storage`), which this worker
    then runs, so the study still reaches `target`. Only Optuna schedules trials."""
    guard = FailureGuard(max_failures)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    heartbeat = heartbeat_interval(study)
    stop = optuna.study.MaxTrialsCallback(target, states=IN_FLIGHT)
    while count_done(study) < target and not guard.tripped:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        in_flight = study.get_trials(deepcopy=False, states=IN_FLIGHT)
        waiting = any(t.state == TrialState.WAITING for t in in_flight)  # a retry to run
        if waiting or len(in_flight) < target:
            study.optimize(
                objective,
                n_trials=None,
                timeout=left,
                catch=(Exception,),
                callbacks=[stop, guard, *callbacks],
                gc_after_trial=False,
            )
        elif heartbeat is None:
            break  # a file: no heartbeats; the next `make tune` fails a killed trial
        else:  # the rest run elsewhere: wait for them, or for a lost one to be failed
            optuna.storages.fail_stale_trials(study)
            time.sleep(min(heartbeat, left) if left is not None else heartbeat)
    return guard


class Progress:
    """A tqdm bar over the study's target: trials counted, best value, pruned/failed, ETA."""

    def __init__(self, target: int, done: int, direction: str, name: str, disable: bool = False):
        self.bar = tqdm(
            total=target,
            initial=min(done, target),
            unit="trial",
            desc=f"tune {name}",
            disable=disable,
            dynamic_ncols=True,
        )
        self.direction = direction

    def refresh(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        self.bar.n = min(sum(t.state in COUNTED for t in trials), self.bar.total)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        postfix = {
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
        }
        if complete:
            pick = min if self.direction == "minimize" else max
            best = pick(complete, key=lambda t: t.value)
            postfix = {"best": f"{best.value:.4f} (#{best.number})", **postfix}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.refresh(study)

    def close(self) -> None:
        self.bar.close()
