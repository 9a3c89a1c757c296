"""Where a study lives (SQLite, journal file, database server) and its sampler and pruner.

The default storage is anchored at the repository root: `tune/optuna.db` for one
process, `tune/optuna.journal` for several worker processes (SQLite locks badly under
concurrent writers). Any Optuna storage URL may replace it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from petscan.utils.errors import ParamsError, UserError
from petscan.utils.redact import redact_text, redact_url

if TYPE_CHECKING:
    from petscan.params.learning import PrunerParams, TuneParams

log = logging.getLogger(__name__)

SQLITE_FILE = "optuna.db"
JOURNAL_FILE = "optuna.journal"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
# counted, or on its way: running somewhere, or waiting to be retried
IN_FLIGHT = (*COUNTED, TrialState.RUNNING, TrialState.WAITING)
# the Python module of a database driver -> the pip package that provides it
DRIVER_PACKAGES = {
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


class StorageError(UserError):
    """The study's storage URL cannot work here (unknown database, driver not installed)."""


def default_storage(root: Path, out_dir: str, workers: int) -> str:
    """`sqlite:///<root>/tune/optuna.db` (1 worker) or `<root>/tune/optuna.journal`."""
    folder = Path(root) / out_dir
    if workers > 1:
        return str(folder / JOURNAL_FILE)
    return f"sqlite:///{folder / SQLITE_FILE}"


def resolve_storage(tune: TuneParams, root: Path, workers: int) -> str:
    """`--storage` / `tune.storage` if given, else the default for the number of workers."""
    return tune.storage or default_storage(root, tune.out_dir, workers)


def is_journal(url: str) -> bool:
    """A journal file: a plain path (no `scheme://`) or a `journal:` prefix."""
    return url.startswith("journal:") or "://" not in url


def is_local_file_storage(url: str) -> bool:
    """A journal or SQLite file: no other machine runs trials on it."""
    return is_journal(url) or url.startswith("sqlite:")


def check_driver(url: str) -> None:
    """`StorageError` (one line, password masked) when `url` is a database URL whose
    SQLAlchemy dialect is unknown or whose driver is not installed; nothing is connected."""
    if is_journal(url):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url).get_dialect().import_dbapi()
    except ImportError as err:
        module = err.name or "the database driver"
        package = DRIVER_PACKAGES.get(module.split(".")[0], module)
        other = (  # SQLAlchemy 2.1 wants psycopg (3) for postgresql://; `dev` has psycopg2
            ", or write postgresql+psycopg2:// to use the installed psycopg2"
            if module == "psycopg" and importlib.util.find_spec("psycopg2")
            else ""
        )
        raise StorageError(
            f"the study's storage {storage_label(url)} needs the Python module '{module}', "
            f"which is not installed: pip install {package}{other} (or use another --storage)"
        ) from None
    except (ArgumentError, ValueError) as err:
        raise StorageError(
            f"the study's storage {storage_label(url)} is no database URL that SQLAlchemy "
            f"knows ({' '.join(redact_text(str(err)).split())}): use e.g. "
            "postgresql://user@host/db, or a journal file path"
        ) from None


def make_storage(
    url: str,
    tune: TuneParams | None = None,
    on_failed: Callable[[FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for a URL (RDB, heartbeat on servers) or a journal-file path;
    `StorageError` when its database driver is missing (`check_driver`).

    On a database server every running trial's worker records a heartbeat each
    `tune.heartbeat_interval_s`; a trial silent for `tune.grace_period_s` (its machine was
    lost) is failed by whichever worker next starts a trial, which calls `on_failed(trial)`
    and enqueues a copy with the same values (`RetryHeartbeatStaleTrialCallback`, at most
    `tune.max_retry` times). `tune` None: 60 s, 180 s, 3 retries (the schema's defaults)."""
    check_driver(url)
    if is_journal(url):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    # A database server: heartbeats let another machine's crashed trial be failed.
    interval, grace, retries = (
        (tune.heartbeat_interval_s, tune.grace_period_s, tune.max_retry) if tune else (60, 180, 3)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=retries)

        def failed(study: optuna.Study, trial: FrozenTrial) -> None:
            # The retry first: until it is enqueued the lost trial counts nowhere, and a
            # worker asking for a trial then would start a new one in its place.
            retry(study, trial)
            log.warning(
                "trial %d: its worker %s stopped sending heartbeats: marked FAIL%s",
                trial.number,
                trial.user_attrs.get("worker", "?"),
                "" if retries == 0 else ", retried",
            )
            if on_failed is not None:
                on_failed(trial)

        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=failed,
        )


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats; None: the storage has none (a file)."""
    return getattr(study._storage, "get_heartbeat_interval", lambda: None)()


def storage_label(url: str) -> str:
    """The storage URL without a password or query string (for tags and messages)."""
    return redact_url(url)


def make_sampler(tune: TuneParams, worker: int = 0, stored: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded TPE; the seed also mixes in the worker index and the trials already stored,
    so parallel workers and resumed runs do not replay the same random start-up points."""
    entropy = [tune.seed, worker, stored]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=tune.n_startup_trials,
            multivariate=True,
            constant_liar=True,
        )


def make_pruner(pruner: PrunerParams, max_steps: int) -> optuna.pruners.BasePruner:
    """`tune.pruner`: its `name` (median | hyperband | none; the schema checks it) and keyword
    arguments of that Optuna pruner, which only the pruner can check (`ParamsError`)."""
    kwargs = pruner.model_dump()
    name = kwargs.pop("name")
    try:
        if name == "median":
            return optuna.pruners.MedianPruner(**kwargs)
        if name == "hyperband":
            kwargs.setdefault("max_resource", max(1, max_steps))
            return optuna.pruners.HyperbandPruner(**kwargs)
    except TypeError as err:
        raise ParamsError(f"params.yaml tune.pruner: {err}") from err
    return optuna.pruners.NopPruner()


def count_done(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials: what counts towards `tune.n_trials`."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials FAIL (left by a killed process); only safe before workers start."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        with contextlib.suppress(RuntimeError):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return [t.number for t in stale]
