"""`petscan.tuning`: search space, objective, storage, MLflow runs, resume, workers, apply.

Studies run on tiny random features written in the real cache format (manifest CSVs,
`{split}.npy` + `{split}.json` with the manifest's sha256), 3 classes, D = 8, 2 epochs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import random_weights
from optuna.trial import TrialState
from sklearn.metrics import f1_score, roc_auc_score

from petscan.data import features
from petscan.data.folds import patient_folds as cv_folds
from petscan.evaluation import metrics
from petscan.params import loading
from petscan.params.learning import OBJECTIVES
from petscan.params.schema import Params, section, validate, with_overrides
from petscan.params.space import (
    overrides_from,
    parse_dimension,
    parse_space,
    sample,
    schedule_from_phases,
)
from petscan.tracking import provenance
from petscan.training import fit as training
from petscan.tuning.apply import apply_best
from petscan.tuning.command import with_command_line
from petscan.tuning.data import TuneData
from petscan.tuning.objective import objective_value
from petscan.tuning.run import run_tune
from petscan.tuning.storage import make_pruner, make_sampler, make_storage, storage_label

CLASSES = {
    "No cancer": "No cancer",
    "breast cancer": "Breast cancer",
    "prostate cancer": "Prostate cancer",
}
REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SPACE = {
    "train.loss.variant": {"choices": ["categorical", "one_vs_rest"]},
    "train.loss.alpha": {"low": 0.2, "high": 0.8},
    "train.loss.gamma": {"low": 0.0, "high": 3.0},
    "schedule.warmup_lr": {"low": 1e-3, "high": 3e-2, "log": True},
    "schedule.peak_lr": {"low": 1e-3, "high": 3e-2, "log": True},
    "schedule.decay_lr": 1e-3,
    "schedule.final_lr": 1e-4,
    "schedule.warmup_epochs": {"low": 0, "high": 1},
    "schedule.peak_epochs": 1,
    "schedule.decay_epochs": 1,
    "model.dropout": {"low": 0.0, "high": 0.5},
}
# the `tune` section as the study's parent run logs it (the MLflow params of make_params)
TUNE_LOGGED = {
    "tune.study_name": "s",
    "tune.n_trials": "3",
    "tune.seed": "0",
    "tune.objective": "roc_auc_macro",
    "tune.direction": "maximize",
    "tune.cv_folds": "0",
    "tune.pruner.name": "none",
    "tune.max_failures": "3",
}


# ----------------------------------------------------------------------------- fixtures
def make_cache(root: Path, n_train=60, n_val=21, views=3, dim=8, seed=0) -> Path:
    """Manifests and features in the format `features.load_features` checks."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 1.5, size=(3, dim))
    names = list(CLASSES.values())
    for split, n, v in (("train", n_train, views), ("val", n_val, 1), ("test", 9, 1)):
        labels = np.arange(n) % 3
        frame = pd.DataFrame(
            {
                "path": [f"data/raw/x/{split}-{i:03d}_v1.png" for i in range(n)],
                "class": [names[k] for k in labels],
                "label": labels,
                "patient": [f"{split}-{i // 2:03d}" for i in range(n)],
                "sha256": ["0" * 64] * n,
            }
        )
        manifest = root / "data" / "split" / f"{split}.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(manifest, index=False)
        x = means[labels][:, None, :] + rng.normal(0.0, 1.0, size=(n, v, dim))
        weights = random_weights("ab" * 32)
        features.save_features(root / "data" / "features", split, x, manifest, weights)
    return root


def make_params(experiment: str, study: str = "s", **tune) -> Params:
    """The sections a study reads, small; every other key takes the schema's default."""
    sections = {
        "data": {"raw_dir": "data/raw", "classes": dict(CLASSES)},
        "model": {
            "backbone": "tiny",
            "input_size": [32, 32],
            "preprocessing": "rescale",
            "resize": "stretch",
            "head_units": 8,
            "l2": 1e-4,
            "dropout": 0.1,
        },
        "train": {
            "mode": "cached",
            "batch_size": 16,
            "epochs": 2,
            "optimizer": {"name": "adam"},
            "lr_schedule": {"boundaries": [1], "values": [1e-2, 1e-3]},
            "early_stopping": {"enabled": True, "monitor": "val_loss", "patience": 5},
            "reduce_lr_on_plateau": {"enabled": False},
            "class_weight": "balanced",
            "loss": {
                "name": "focal",
                "variant": "categorical",
                "alpha": [0.5, 0.3, 0.2],
                "gamma": 2,
            },
            "seed": 0,
            "out_dir": "models",
        },
        "mlflow": {"tracking_uri": None, "experiment": experiment, "registered_model": None},
        "split": {"out_dir": "data/split"},
        "featurize": {"out_dir": "data/features"},
        "tune": {
            "study_name": study,
            "n_trials": 3,
            "seed": 0,
            "objective": "roc_auc_macro",
            "cv_folds": 0,
            "n_startup_trials": 2,
            "pruner": {"name": "none"},
            "max_failures": 3,
            "out_dir": "tune",
            "space": copy.deepcopy(SPACE),
            **tune,
        },
    }
    return validate(sections)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module (its schema takes seconds to create)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def repo(tmp_path, monkeypatch, mlflow_uri, request) -> Path:
    """A repository root with a tiny feature cache; MLflow and PETSCAN_ROOT kept in tmp."""
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    return make_cache(tmp_path)


def experiment_name(request) -> str:
    return f"tune-{request.node.name}"


def children(parent_run_id: str) -> list:
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=1000,
    )


def load(repo: Path, name: str = "s", storage: str | None = None) -> optuna.Study:
    url = storage or f"sqlite:///{repo / 'tune' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=make_storage(url))


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, mlflow_uri):
    """A 3-trial study (with plots), run once for the tests that only read its results."""
    root = make_cache(tmp_path_factory.mktemp("tiny"))
    params = make_params("tune-tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PETSCAN_ROOT", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        summary = run_tune(params, root, progress=False)
    return root, params, summary


# ----------------------------------------------------------------------------- search space
def test_space_fixed_ranged_choices_and_per_class_alpha():
    dims = {d.name: d for d in parse_space(SPACE, 3)}
    assert [f"train.loss.alpha.{i}" for i in range(3)] == [n for n in dims if "alpha" in n]
    assert dims["train.loss.alpha.1"].kind == "float" and dims["train.loss.alpha.1"].low == 0.2
    assert dims["schedule.warmup_epochs"].kind == "int"  # whole-number bounds
    assert dims["schedule.peak_lr"].log and dims["schedule.peak_lr"].kind == "float"
    assert dims["train.loss.variant"].choices == ("categorical", "one_vs_rest")
    assert dims["schedule.decay_lr"].kind == "fixed" and dims["schedule.decay_lr"].value == 1e-3
    per_class = parse_space({"train.loss.alpha": [0.5, {"low": 0.1, "high": 0.2}, 0.3]}, 3)
    assert [d.kind for d in per_class] == ["fixed", "float", "fixed"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    values = sample(list(dims.values()), study.ask())
    assert 0.2 <= values["train.loss.alpha.2"] <= 0.8 and values["schedule.peak_epochs"] == 1
    assert values["schedule.warmup_epochs"] in (0, 1)


def test_schedule_phases_give_increasing_boundaries_and_overrides():
    phases = {
        "warmup_lr": 1e-5,
        "peak_lr": 1e-3,
        "decay_lr": 1e-4,
        "final_lr": 1e-6,
        "warmup_epochs": 3,
        "peak_epochs": 4,
        "decay_epochs": 5,
    }
    assert schedule_from_phases(phases) == {
        "boundaries": [3, 7, 12],
        "values": [1e-5, 1e-3, 1e-4, 1e-6],
    }
    values = {f"schedule.{k}": v for k, v in phases.items()}
    values.update({"train.loss.alpha.0": 0.4, "train.loss.alpha.1": 0.5, "train.loss.alpha.2": 0.6})
    values["model.dropout"] = 0.25
    overrides = overrides_from(values, 3)
    assert overrides == {
        "model.dropout": 0.25,
        "train.loss.alpha": [0.4, 0.5, 0.6],
        "train.lr_schedule.boundaries": [3, 7, 12],
        "train.lr_schedule.values": [1e-5, 1e-3, 1e-4, 1e-6],
    }
    base = make_params("x")
    merged = with_overrides(base, overrides)  # validated again by the schema
    assert merged.train.lr_schedule.boundaries == [3, 7, 12]
    assert merged.train.loss.alpha == [0.4, 0.5, 0.6] and merged.model.dropout == 0.25
    assert merged.train.loss.gamma == 2 and merged.model.head_units == 8
    assert base.train.lr_schedule.boundaries == [1]  # the original is untouched
    with pytest.raises(ValueError, match="tune trial 7: train.loss.alpha"):
        with_overrides(base, {"train.loss.alpha": [0.4, 0.5]}, "tune trial 7")  # 3 classes


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.loss.gama": 2.0}, "not a key of params.yaml"),
        ({"optimizer.lr": 1.0}, "must start with train., model. or schedule."),
        ({"schedule.peak_lr": 1e-3}, "missing"),
        ({"model.l2": {"low": 0.0, "high": 1.0, "log": True}}, "log range needs low > 0"),
        ({"model.dropout": {"low": 0.5, "high": 0.1}}, "low <= high"),
        ({"train.loss.alpha": [0.1, 0.2]}, "one per class"),
        ({"model.dropout": {"lo": 0.1}}, "plain value"),
    ],
)
def test_space_errors_name_the_entry(space, message):
    base = make_params("x")
    with pytest.raises(ValueError, match=message):
        parse_space(space, 3, {"train": base.train.model_dump(), "model": base.model.model_dump()})


def test_schedule_durations_must_keep_boundaries_increasing():
    space = {**SPACE, "schedule.peak_epochs": {"low": 0, "high": 3}}
    with pytest.raises(ValueError, match="peak_epochs: durations must be >= 1"):
        parse_space(space, 3)


def test_objective_is_a_loss_independent_metric_matching_sklearn():
    rng = np.random.default_rng(3)
    y = np.arange(30) % 3
    proba = rng.dirichlet(np.ones(3), size=30)
    names = list(CLASSES.values())
    assert objective_value("f1_macro", y, proba, names) == pytest.approx(
        f1_score(y, proba.argmax(1), average="macro")
    )
    assert objective_value("roc_auc_macro", y, proba, names) == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )
    assert np.isnan(objective_value("f1_macro", y, np.full((30, 3), np.nan), names))
    point = metrics.point_metrics(y, proba, names)
    for name in ("roc_auc_macro", "balanced_accuracy", "log_loss"):
        assert objective_value(name, y, proba, names) == pytest.approx(point[name])
    assert section("tune", {"objective": "log_loss"}).direction == "minimize"
    assert section("tune", {"objective": "roc_auc_macro"}).direction == "maximize"
    with pytest.raises(ValueError, match="not comparable"):
        section("tune", {"objective": "val_loss"})
    with pytest.raises(ValueError, match="unknown metric"):
        section("tune", {"objective": "auc"})


def test_the_objectives_are_the_scalar_metrics():
    """`tune.objective` may name any study-wide scalar of `metrics.point_metrics` (not a
    per-class value, not the count `n`), and nothing else."""
    point = metrics.point_metrics(np.array([0, 1, 2]), np.eye(3) * 0.7 + 0.1, ["a", "b", "c"])
    assert {k for k in point if "/" not in k and k != "n"} == OBJECTIVES


def test_the_tune_defaults_are_the_schemas_and_the_command_line_is_checked():
    tune = section("tune")
    assert tune.seed == 101 and tune.pruner.model_dump() == {
        "name": "median",
        "n_startup_trials": 5,
        "n_warmup_steps": 10,
    }
    assert with_command_line(tune, n_trials=None, storage=None) is tune
    given = with_command_line(tune, n_trials=7, study_name="other", timeout_s=2.5)
    assert (given.n_trials, given.study_name, given.timeout_s) == (7, "other", 2.5)
    assert given.space == tune.space and tune.n_trials == 50  # a copy: tune is untouched
    with pytest.raises(ValueError, match="the command line: tune.study_name = 'a b'"):
        with_command_line(tune, study_name="a b")
    with pytest.raises(ValueError, match="the command line: tune.n_trials = -1"):
        with_command_line(tune, n_trials=-1)


def test_cv_folds_keep_patients_together_and_repeat_val_views():
    data = TuneData(
        train_x=np.zeros((12, 3, 2), np.float32),
        train_y=np.arange(12) % 3,
        train_groups=np.array([f"t{i // 2}" for i in range(12)]),
        val_x=np.arange(6 * 2, dtype=np.float32).reshape(6, 1, 2),
        val_y=np.arange(6) % 3,
        val_groups=np.array([f"v{i // 2}" for i in range(6)]),
        class_names=list(CLASSES.values()),
    )
    x, y, groups = data.combined()
    assert x.shape == (18, 3, 2) and y.shape == (18,)
    np.testing.assert_array_equal(x[12:, 2], data.val_x[:, 0])  # view 0 repeated
    folds = cv_folds(y, groups, 3, seed=0)
    assert len(folds) == 3
    covered = np.sort(np.concatenate([va for _, va in folds]))
    np.testing.assert_array_equal(covered, np.arange(18))
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
    with pytest.raises(ValueError, match="0 \\(hold-out val\\) or k >= 2"):
        section("tune", {"cv_folds": 1})  # the schema refuses one fold
    with pytest.raises(ValueError, match="only 9 patients"):
        cv_folds(y, groups, 10, seed=0)


def test_pruners_and_sampler():
    def pruner(**values):
        return section("tune", {"pruner": values}).pruner

    assert isinstance(make_pruner(pruner(name="median"), 10), optuna.pruners.MedianPruner)
    hyper = make_pruner(pruner(name="hyperband", min_resource=2), 20)
    assert isinstance(hyper, optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(pruner(name="none"), 10), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="tune.pruner"):
        make_pruner(pruner(name="median", bogus=1), 10)
    with pytest.raises(ValueError, match="tune.pruner.name"):
        pruner(name="asha")
    settings = section("tune", {"seed": 5})
    first = make_sampler(settings, 0, 0)._random_sampler._rng.rng.random()
    again = make_sampler(settings, 0, 0)._random_sampler._rng.rng.random()
    other = make_sampler(settings, 1, 0)._random_sampler._rng.rng.random()
    resumed = make_sampler(settings, 0, 7)._random_sampler._rng.rng.random()
    assert first == again and len({first, other, resumed}) == 3


# ----------------------------------------------------------------------------- studies
def test_tiny_study_has_one_mlflow_child_per_trial(tiny_study):
    root, params, summary = tiny_study
    study = load(root)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert summary["trials"]["complete"] == 3 and summary["n_trials_target"] == 3
    runs = children(summary["mlflow_parent_run_id"])
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [0, 1, 2]
    for run in runs:
        trial = trials[int(run.data.tags["optuna.trial_number"])]
        assert run.data.tags["optuna.study_name"] == "s"
        assert run.data.tags["optuna.trial_state"] == "complete"
        assert run.info.status == "FINISHED"
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.metrics["objective"] == pytest.approx(trial.value)
        assert float(run.data.params["train.loss.gamma"]) == pytest.approx(
            trial.params["train.loss.gamma"]
        )
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_roc_auc_macro")
        assert sorted(m.step for m in history) == list(range(trial.user_attrs["epochs_run"]))
        assert {"loss", "val_loss", "learning_rate"} <= set(run.data.metrics)
    parent = mlflow.MlflowClient().get_run(summary["mlflow_parent_run_id"])
    assert parent.data.tags["petscan.run_kind"] == "tune_study"
    assert parent.data.tags["random_init"] == "true"
    assert "RANDOM-INIT" in parent.data.tags["mlflow.note.content"]
    assert {k: v for k, v in parent.data.params.items() if k in TUNE_LOGGED} == TUNE_LOGGED
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    # the same data hash as a training run on this split (train + val + test manifests)
    assert parent.data.tags["data_manifest_sha256"] == provenance.data_hash(root / "data" / "split")
    contexts = {
        {t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset.name
        for d in parent.inputs.dataset_inputs
    }
    assert contexts == {"train": "train", "validation": "val", "test": "test"}
    # optuna-dashboard shows the study's user attributes: the backbone and its weights
    assert study.user_attrs["backbone"] == "tiny" and study.user_attrs["random_init"] is True
    assert study.user_attrs["weights_label"] == "RANDOM-INIT backbone (not RadImageNet)"
    assert summary["weights_label"] == "RANDOM-INIT backbone (not RadImageNet)"
    header = (root / "tune" / "best_params.yaml").read_text().splitlines()[:3]
    assert "# WARNING: RANDOM-INIT backbone (not RadImageNet): demo numbers only" in header
    frame = pd.read_csv(root / "tune" / "trials.csv")
    assert list(frame["number"]) == [0, 1, 2] and set(frame["state"]) == {"COMPLETE"}
    plots = {p.name for p in (root / "tune" / "plots").glob("*.png")}
    assert {"optimization_history.png", "param_importances.png", "slice.png"} <= plots
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"best_params.yaml", "trials.csv", "plots"} <= artifacts


def test_best_params_load_into_train_and_fit(tiny_study):
    root, params, summary = tiny_study
    text = (root / "tune" / "best_params.yaml").read_text()
    assert text.startswith("# Best trial of Optuna study 's'")
    best = yaml.safe_load(text)
    study = load(root)
    assert best["train"]["loss"]["gamma"] == pytest.approx(
        study.best_params["train.loss.gamma"], rel=1e-3
    )
    assert len(best["train"]["loss"]["alpha"]) == 3
    assert set(best) == {"train", "model"} and set(best["train"]) == {"loss", "lr_schedule"}
    merged = with_overrides(params, {**loading.flatten(best), "train.epochs": 1})
    cache = np.load(root / "data" / "features" / "train.npy")
    val = np.load(root / "data" / "features" / "val.npy")
    labels = pd.read_csv(root / "data" / "split" / "train.csv")["label"].to_numpy()
    val_labels = pd.read_csv(root / "data" / "split" / "val.csv")["label"].to_numpy()
    result = training.fit_cached(
        cache, labels, val, val_labels, merged.model, merged.train, 3, verbose=0
    )
    assert result.epochs_run == 1 and np.isfinite(result.history["loss"]).all()


def test_resumed_study_adds_trials_without_repeating_numbers(repo, request):
    params = make_params(experiment_name(request), n_trials=2)
    first = run_tune(params, repo, progress=False, plots=False)
    second = run_tune(params, repo, trials=4, progress=False, plots=False)
    assert first["mlflow_parent_run_id"] == second["mlflow_parent_run_id"]  # same parent
    numbers = [t.number for t in load(repo).get_trials()]
    assert numbers == [0, 1, 2, 3]
    runs = children(second["mlflow_parent_run_id"])
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [0, 1, 2, 3]
    third = run_tune(params, repo, trials=4, progress=False, plots=False)  # nothing left
    assert third["trials"]["complete"] == 4 and len(load(repo).get_trials()) == 4
    changed = make_params(experiment_name(request), n_trials=5, objective="f1_macro")
    with pytest.raises(ValueError, match="--study NEW_NAME"):
        run_tune(changed, repo, progress=False, plots=False)


def test_parallel_workers_on_journal_storage_record_each_trial_once(repo, request):
    params = make_params(experiment_name(request), n_trials=4)
    summary = run_tune(params, repo, workers=2, progress=False, plots=False)
    journal = repo / "tune" / "optuna.journal"
    assert journal.is_file() and summary["storage"] == str(journal)
    trials = load(repo, storage=str(journal)).get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # every number once
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(done) <= 5  # each worker may finish one trial past the target
    runs = children(summary["mlflow_parent_run_id"])
    tagged = [int(r.data.tags["optuna.trial_number"]) for r in runs]
    assert sorted(tagged) == numbers
    assert not (repo / "tune" / "optuna.db").exists()


def test_stopped_study_keeps_finished_trials_and_resumes(repo, request, monkeypatch):
    params = make_params(experiment_name(request), n_trials=4)
    real_fit, calls = training.fit_cached, []

    def stopping_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during trial 2
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit_cached", stopping_fit)
    with pytest.raises(KeyboardInterrupt):
        run_tune(params, repo, progress=False, plots=False)
    study = load(repo)
    assert [t.state for t in study.get_trials()] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.FAIL,
    ]
    assert len(pd.read_csv(repo / "tune" / "trials.csv")) == 3  # outputs written on the way out
    summary = json.loads((repo / "tune" / "summary.json").read_text())
    parent = mlflow.MlflowClient().get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "KILLED"
    killed = [r for r in children(parent.info.run_id) if r.data.tags["optuna.trial_number"] == "2"]
    assert killed[0].info.status == "KILLED"
    # a SIGKILLed process leaves a RUNNING trial behind: the next run marks it FAIL
    study.ask()
    monkeypatch.setattr(training, "fit_cached", real_fit)
    run_tune(params, repo, progress=False, plots=False)
    states = [t.state for t in load(repo).get_trials()]
    assert states[3] == TrialState.FAIL and TrialState.RUNNING not in states
    assert states.count(TrialState.COMPLETE) == 4


def test_nan_trial_is_failed_and_the_study_goes_on(repo, request, monkeypatch):
    params = make_params(experiment_name(request), n_trials=3)
    real_fit, calls = training.fit_cached, []

    def poisoned_fit(*args, **kwargs):
        calls.append(1)
        result = real_fit(*args, **kwargs)
        if len(calls) == 2:
            result.head.set_weights([np.full_like(w, np.nan) for w in result.head.get_weights()])
        return result

    monkeypatch.setattr(training, "fit_cached", poisoned_fit)
    summary = run_tune(params, repo, progress=False, plots=False)
    trials = load(repo).get_trials()
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert "diverged" in trials[1].user_attrs["error"]
    assert summary["trials"] == {**summary["trials"], "complete": 3, "fail": 1}
    failed = [r for r in children(summary["mlflow_parent_run_id"]) if r.info.status == "FAILED"]
    assert [r.data.tags["optuna.trial_number"] for r in failed] == ["1"]
    assert failed[0].data.tags["optuna.trial_state"] == "failed"


def test_repeated_failures_stop_the_study(repo, request, monkeypatch):
    params = make_params(experiment_name(request), n_trials=5, max_failures=2)

    def broken_fit(*args, **kwargs):
        raise ValueError("broken features")

    monkeypatch.setattr(training, "fit_cached", broken_fit)
    with pytest.raises(RuntimeError, match="2 trials failed in a row.*broken features"):
        run_tune(params, repo, progress=False, plots=False)
    assert [t.state for t in load(repo).get_trials()] == [TrialState.FAIL] * 2


def test_cross_validation_objective_is_the_fold_mean(repo, request):
    params = make_params(experiment_name(request), n_trials=1, cv_folds=2)
    summary = run_tune(params, repo, progress=False, plots=False)
    (run,) = children(summary["mlflow_parent_run_id"])
    folds = [run.data.metrics[f"fold{k}/final_roc_auc_macro"] for k in (0, 1)]
    assert run.data.metrics["objective"] == pytest.approx(np.mean(folds))
    assert summary["best_value"] == pytest.approx(np.mean(folds))


def _postgres_url() -> str:
    url = os.environ.get("PETSCAN_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(
            "PETSCAN_TEST_POSTGRES_URL is not set: run .ci/postgres, then "
            "`source .ci/postgres.env` and export PETSCAN_TEST_POSTGRES_URL"
        )
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
    except Exception as err:  # unreachable server, bad credentials, missing driver
        pytest.skip(f"PostgreSQL at {storage_label(url)} is unreachable: {err}")
    return url


def test_study_on_a_postgresql_server(repo, request):
    url = _postgres_url()
    name = f"petscan-test-{os.getpid()}-{np.random.default_rng().integers(1 << 30)}"
    params = make_params(experiment_name(request), study=name, n_trials=2)
    try:
        summary = run_tune(params, repo, storage=url, progress=False, plots=False)
        study = optuna.load_study(study_name=name, storage=url)
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
        assert summary["storage"] == storage_label(url) and "petscan:***@" in summary["storage"]
    finally:
        optuna.delete_study(study_name=name, storage=url)


# ----------------------------------------------------------------------------- apply, stage
def test_apply_writes_values_into_params_keeping_comments(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO_PARAMS, path)
    before = path.read_text()
    best = {
        "train": {
            "loss": {"gamma": 1.234, "alpha": [0.6, 0.25, 0.15], "variant": "one_vs_rest"},
            "lr_schedule": {"boundaries": [2, 9, 20], "values": [1.0e-5, 0.0003, 4.0e-5, 1.0e-6]},
        },
        "model": {"dropout": 0.55, "l2": 1.0e-5},
    }
    changed = apply_best(best, path)
    assert changed["train.loss.gamma"] == (2.0, 1.234)
    after = path.read_text()
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(line in after.splitlines() for line in comments)
    assert re.search(r"^    variant: one_vs_rest +# categorical \(the seed README", after, re.M)
    assert "    alpha: [0.6, 0.25, 0.15]" in after
    assert "  l2: 1.0e-05" in after  # PyYAML would read 1e-05 as a string
    params = loading.load_params(path)
    assert params["model"]["l2"] == 1e-5 and params["train"]["lr_schedule"]["values"][0] == 1e-5
    assert params["train"]["lr_schedule"]["boundaries"] == [2, 9, 20]
    assert params["tune"] == loading.load_params(REPO_PARAMS)["tune"]
    changed_lines = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed_lines) == 7  # gamma, alpha, variant, boundaries, values, dropout, l2
    assert apply_best(best, path) == {}  # already applied
    with pytest.raises(KeyError, match="train.loss.beta"):
        apply_best({"train": {"loss": {"beta": 1}}}, path)


def poisoned_study(repo: Path, name: str, params: Params, user_attrs: dict, **changed) -> None:
    """A study in the default SQLite storage with one COMPLETE trial, written the way a
    stranger with write access to a shared storage could: any params, any user attrs."""
    dims = parse_space(SPACE, 3)
    values = {
        "train.loss.variant": "one_vs_rest",
        "train.loss.alpha.0": 0.7,
        "train.loss.alpha.1": 0.25,
        "train.loss.alpha.2": 0.3,
        "train.loss.gamma": 1.5,
        "schedule.warmup_lr": 0.002,
        "schedule.peak_lr": 0.02,
        "schedule.warmup_epochs": 1,
        "model.dropout": 0.25,
    }
    dists = {}
    for dim in dims:
        if dim.kind == "categorical":
            dists[dim.name] = optuna.distributions.CategoricalDistribution(dim.choices)
        elif dim.kind == "int":
            dists[dim.name] = optuna.distributions.IntDistribution(dim.low, dim.high)
        elif dim.kind == "float":
            dists[dim.name] = optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
    for key, (value, dist) in changed.items():
        values[key.replace("__", ".")], dists[key.replace("__", ".")] = value, dist
    storage = f"sqlite:///{repo / 'tune' / 'optuna.db'}"
    study = optuna.create_study(
        storage=make_storage(storage), study_name=name, direction="maximize"
    )
    trial = optuna.trial.create_trial(
        params=values, distributions=dists, value=0.99, user_attrs=user_attrs
    )
    study.add_trial(trial)


def test_apply_rebuilds_from_the_space_and_ignores_poisoned_overrides(repo, request, caplog):
    params = make_params(experiment_name(request), n_trials=1)
    path = repo / "params.yaml"
    path.write_text(
        yaml.safe_dump({**params.model_dump(), "weights": {"sources": [], "sha256": None}})
    )
    poison = {
        "weights.sources": [{"type": "url", "url": "https://evil.example/w.h5"}],
        "weights.sha256": None,
        "mlflow.tracking_uri": "https://evil.example/",
        "train.loss.gamma": 3.0,
    }
    evil_param = optuna.distributions.CategoricalDistribution(["https://evil.example/"])
    poisoned_study(
        repo, "s", params, {"overrides": poison},
        mlflow__tracking_uri=("https://evil.example/", evil_param),
    )  # fmt: skip
    caplog.set_level("WARNING", logger="petscan.tuning.apply")
    summary = run_tune(params, repo, apply=True, params_path=path, progress=False, plots=False)
    after = loading.load_params(path)
    assert after["weights"] == {"sources": [], "sha256": None}
    assert after["mlflow"] == params.mlflow.model_dump()  # tracking_uri still null
    assert after["train"]["loss"]["gamma"] == 1.5  # the trial's value, not the stored 3.0
    assert after["train"]["loss"]["alpha"] == [0.7, 0.25, 0.3]
    assert after["train"]["lr_schedule"] == {
        "boundaries": [1, 2, 3],
        "values": [0.002, 0.02, 0.001, 0.0001],
    }
    assert after["model"]["dropout"] == 0.25
    assert set(summary["applied"]) <= {
        "train.loss.variant", "train.loss.alpha", "train.loss.gamma", "model.dropout",
        "train.lr_schedule.boundaries", "train.lr_schedule.values",
    }  # fmt: skip
    assert "ignored: mlflow.tracking_uri, weights.sha256, weights.sources\n" in caplog.text
    fragment = yaml.safe_load((repo / "tune" / "best_params.yaml").read_text())
    assert set(fragment) == {"train", "model"} and fragment["train"]["loss"]["gamma"] == 1.5


def test_apply_refuses_a_trial_value_the_space_cannot_produce(repo, request):
    params = make_params(experiment_name(request), n_trials=1)
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump()))
    before = path.read_bytes()
    wide = optuna.distributions.FloatDistribution(0.0, 100.0)  # widened by the attacker
    poisoned_study(repo, "s", params, {}, train__loss__gamma=(99.0, wide))
    with pytest.raises(ValueError, match="train.loss.gamma = 99.0, which tune.space cannot"):
        run_tune(params, repo, apply=True, params_path=path, progress=False, plots=False)
    assert path.read_bytes() == before
    summary = json.loads((repo / "tune" / "summary.json").read_text())
    assert "cannot produce" in summary["best_params_refused"] and "best_params" not in summary
    assert not (repo / "tune" / "best_params.yaml").exists()
    with pytest.raises(ValueError, match=r"refusing to write \['weights.seed'\]"):
        apply_best({"weights": {"seed": 1}}, path, allowed={"train.loss.gamma"})
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "kind, spec, inside, outside",
    [
        (
            "float",
            {"low": 0.0, "high": 1.0},
            [0.0, 0.5, 1, 1.0],
            [-0.1, 1.01, float("nan"), "0.5", True],
        ),
        ("int", {"low": 0, "high": 3}, [0, 3, 2.0], [4, 1.5, -1, "1", False]),
        ("categorical", {"choices": ["a", 1]}, ["a", 1], ["b", "1", True, 1.5]),
        ("fixed", 7, [7], [8, "7"]),
    ],
)
def test_dimension_contains(kind, spec, inside, outside):
    dim = parse_dimension("x", spec)
    assert dim.kind == kind
    assert all(dim.contains(v) for v in inside)
    assert not any(dim.contains(v) for v in outside)


def test_stage_help_and_missing_features(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tune_stage", REPO_PARAMS.parent / "stages" / "tune.py"
    )
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["--help"])
    assert exit_info.value.code == 0 and "--workers" in capsys.readouterr().out
    params = make_params("tune-stage")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump()))
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    assert stage.main(["--params", str(path), "--no-progress"]) == 1  # the user's to fix
    err = capsys.readouterr().err
    assert err.startswith("tune: error: ") and "run `dvc repro featurize` first" in err
    assert stage.main(["--params", str(path), "--show-storage"]) == 0
    assert capsys.readouterr().out.strip() == f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}"
    assert stage.main(["--params", str(path), "--show-storage", "--workers", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tune" / "optuna.journal")
    secret = "postgresql://u:S3CRET@127.0.0.1:1/x?password=S3CRET"
    assert stage.main(["--params", str(path), "--show-storage", "--storage", secret]) == 0
    assert capsys.readouterr().out.strip() == "postgresql://u:***@127.0.0.1:1/x?***"
    monkeypatch.setenv("PETSCAN_TUNE_STORAGE", secret)  # how `make dashboard` passes it
    assert stage.main(["--params", str(path), "--show-storage"]) == 0
    assert capsys.readouterr().out.strip() == "postgresql://u:***@127.0.0.1:1/x?***"


def test_stage_dashboard_gets_the_storage_from_the_environment(tmp_path, monkeypatch, capsys):
    import importlib.util

    import optuna_dashboard

    spec = importlib.util.spec_from_file_location(
        "tune_stage", REPO_PARAMS.parent / "stages" / "tune.py"
    )
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    served = []
    monkeypatch.setattr(
        optuna_dashboard,
        "run_server",
        lambda storage, host, port: served.append((storage, host, port)),
    )
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(make_params("tune-dashboard").model_dump()))
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    monkeypatch.setenv("PETSCAN_TUNE_STORAGE", str(tmp_path / "shared.journal"))
    assert stage.main(["--params", str(path), "--dashboard", "--port", "8123"]) == 0
    ((storage, host, port),) = served
    assert isinstance(storage, optuna.storages.JournalStorage) and (host, port) == (
        "127.0.0.1",
        8123,
    )
    assert "shared.journal: http://127.0.0.1:8123/" in capsys.readouterr().out


def test_stage_dashboard_warns_in_one_line_off_loopback(tmp_path, monkeypatch, capsys):
    import importlib.util

    import optuna_dashboard

    spec = importlib.util.spec_from_file_location(
        "tune_stage", REPO_PARAMS.parent / "stages" / "tune.py"
    )
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, host, port: None)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(make_params("tune-dashboard").model_dump()))
    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    for host, expected in (("0.0.0.0", 1), ("127.0.0.1", 0)):
        assert stage.main(["--params", str(path), "--dashboard", "--host", host]) == 0
        warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
        assert (
            warnings
            == [
                f"tune: WARNING: --host = {host!r} is not a loopback address: optuna-dashboard "
                "(every trial) will be reachable from other machines, without a password. Use "
                "127.0.0.1 unless you mean it."
            ][:expected]
        )
