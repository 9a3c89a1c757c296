"""params.yaml schema: defaults, one line a problem, "did you mean", `-S` overrides, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from petscan.params import loading as config
from petscan.params.schema import defaults, section, validate, with_overrides
from petscan.params.space import check_space
from petscan.utils import errors
from petscan.utils.errors import ParamsError


def problems(raw: dict, path: str = "p.yaml") -> list[str]:
    with pytest.raises(ParamsError) as caught:
        validate(raw, path)
    return str(caught.value).splitlines()


def space_problems(raw: dict, path: str = "p.yaml") -> list[str]:
    """What `make tune` says of `tune.space` (the stages do not check it)."""
    with pytest.raises(ParamsError) as caught:
        check_space(validate(raw, path), path)
    return str(caught.value).splitlines()


def plain(params) -> dict:
    return params.model_dump()


def test_the_shipped_params_file_is_valid_and_read_back_unchanged():
    raw = config.load_params(REPO / "params.yaml")
    checked = plain(validate(raw))
    flat_raw, flat_checked = config.flatten(raw), config.flatten(checked)
    changed = {k: (v, flat_checked.get(k)) for k, v in flat_raw.items() if flat_checked.get(k) != v}
    assert changed == {}, "validation must not change a value the file sets"
    # loading resolves `auto` and the backbone's own size and pre-processing, nothing else
    loaded = config.flatten(plain(config.load_validated(REPO / "params.yaml")))
    resolved = {k for k, v in flat_checked.items() if loaded.get(k) != v}
    assert resolved == {"model.backbone", "model.input_size", "model.preprocessing"}
    assert (raw["model"]["backbone"], raw["model"]["input_size"]) == ("auto", None)
    # keys the file leaves out come from the schema's defaults
    assert checked["model"]["standardize"] is True
    assert checked["train"]["collapse"] == {"max_class_share": 0.95, "prior_margin": 0.02}
    assert checked["split"]["min_side"] == 32 and checked["split"]["max_aspect"] == 8.0


def test_params_file_on_main_is_valid():
    """The keys other branches added (issues 8 and 10) are in the schema with their values."""
    main = subprocess.run(
        ["git", "show", "main:params.yaml"], cwd=REPO, capture_output=True, text=True
    )
    if main.returncode != 0:
        pytest.skip("no `main` branch in this checkout")
    checked = plain(validate(yaml.safe_load(main.stdout), "main:params.yaml"))
    flat_raw = config.flatten(yaml.safe_load(main.stdout))
    assert {k: checked_v for k, checked_v in config.flatten(checked).items() if k in flat_raw} == (
        flat_raw
    )


def test_missing_sections_and_keys_take_the_defaults():
    checked = validate({"train": {"epochs": 3}})
    assert checked.train.epochs == 3
    assert checked.train.batch_size == 16
    assert checked.train.early_stopping.monitor == "val_roc_auc_macro"
    assert checked.train.reduce_lr_on_plateau.monitor == "val_roc_auc_macro"
    assert checked.split == defaults().split
    assert validate(None) == defaults()


def test_overrides_are_validated_again_by_the_schema():
    """A trial's dotted overrides go through the same checks as the file (`make tune`)."""
    params = validate({"train": {"epochs": 3}})
    changed = with_overrides(params, {"train.loss.gamma": 1.5, "model.dropout": 0.2})
    assert (changed.train.loss.gamma, changed.model.dropout, changed.train.epochs) == (1.5, 0.2, 3)
    assert params.train.loss.gamma == 2.0, "the original is left as it was"
    with pytest.raises(ParamsError, match=r"model\.dropout = 1\.5: input should be less than 1"):
        with_overrides(params, {"model.dropout": 1.5})


def test_unknown_keys_are_errors_with_a_suggestion():
    lines = problems({"split": {"max_pixel": 100}, "weights": {"fallbak": "none"}})
    assert len(lines) == 2
    assert lines[0].startswith("p.yaml: split.max_pixel: unknown key (did you mean 'max_pixels'?")
    assert "allowed: mode, ratios, seed, restarts, max_file_mb, max_pixels" in lines[0]
    assert lines[1].startswith("p.yaml: weights.fallbak: unknown key (did you mean 'fallback'?")
    assert problems({"trian": {}})[0].startswith(
        "p.yaml: trian: unknown key (did you mean 'train'?"
    )
    source = problems({"weights": {"sources": [{"type": "file", "path": "x", "sah256": None}]}})
    assert source == [
        "p.yaml: weights.sources[0].sah256: unknown key (did you mean 'sha256'? "
        "allowed: sha256, label, type, path)"
    ]


def test_wrong_types_give_one_line_each_with_key_value_and_what_is_allowed():
    lines = problems(
        {
            "train": {"epochs": "ten", "early_stopping": {"monitor": "val_los"}},
            "split": {"seed": "ten", "ratios": "0.9,0.05,0.05"},
        }
    )
    assert lines == [
        "p.yaml: split.ratios = '0.9,0.05,0.05': input should be a valid list",
        "p.yaml: split.seed = 'ten': input should be a valid integer, unable to parse string "
        "as an integer",
        "p.yaml: train.epochs = 'ten': input should be a valid integer, unable to parse string "
        "as an integer",
        "p.yaml: train.early_stopping.monitor = 'val_los': input should be 'val_data_loss', "
        "'val_loss', 'val_accuracy' or 'val_roc_auc_macro'",
    ]
    assert problems({"split": {"ratios": [0.5, 0.2, 0.2]}}) == [
        "p.yaml: split.ratios = [0.5, 0.2, 0.2]: train, val, test ratios must sum to 1 "
        "(they sum to 0.9)"
    ]
    assert problems({"train": {"collapse": {"max_class_share": 0}}}) == [
        "p.yaml: train.collapse.max_class_share = 0: input should be greater than 0"
    ]
    assert (
        "boundaries must increase"
        in problems(
            {"train": {"lr_schedule": {"boundaries": [5, 5], "values": [1e-3, 1e-4, 1e-5]}}}
        )[0]
    )
    assert problems({"data": {"patient_pattern": "(?P<id>x)"}}) == [
        "p.yaml: data.patient_pattern = '(?P<id>x)': needs a named group (?P<patient>...), "
        "or null: one image a patient"
    ]
    assert problems({"weights": {"sources": [{"type": "ftp", "url": "x"}]}})[0].startswith(
        "p.yaml: weights.sources[0]: unknown type 'ftp'"
    )
    assert problems([1, 2]) == [
        "p.yaml: must hold a mapping of sections (data:, split:, ...), got list"
    ]


def test_tune_space_entries_are_checked_for_shape_and_target():
    assert space_problems({"tune": {"space": {"train.loss.gama": {"low": 0, "high": 1}}}}) == [
        "p.yaml: tune.space.train.loss.gama: train.loss.gama is not a key of params.yaml; "
        "fix the name (dotted path into the train or model section)"
    ]
    assert space_problems({"tune": {"space": {"model.dropout": {"low": 0.9, "high": 0.1}}}}) == [
        "p.yaml: tune.space.model.dropout: needs numbers low <= high, got low=0.9 high=0.1"
    ]
    assert (
        "keys must start with train., model. or schedule."
        in space_problems({"tune": {"space": {"featurize.seed": 3}}})[0]
    )
    # a key the schema fills in is a valid target even when the file does not write it
    space = {"train.collapse.prior_margin": {"low": 0.0, "high": 0.1}}
    assert [d.name for d in check_space(validate({"tune": {"space": space}}))] == list(space)
    # the stages validate the file without the search space's deep check (only tune runs it)
    assert validate({"tune": {"space": {"featurize.seed": 3}}}).tune.space == {"featurize.seed": 3}


def test_yaml_syntax_errors_are_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [3\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML at line 3, column 1"):
        config.load_validated(path)


def test_dvc_exp_run_set_override_is_checked_before_train_opens_a_run(tmp_path):
    """`dvc exp run -S` writes the override into params.yaml (DVC's own code does it here);
    the train stage then fails with one line, exit 1, before TensorFlow or MLflow start."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(path, ["train.epochs=ten", "+split.max_pixel=100"])
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == "ten"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PETSCAN_ROOT": str(tmp_path)}
    code = (
        "import runpy, sys\n"
        "sys.argv = ['train', '--params', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_path('stages/train.py', run_name='__main__')\n"
        "finally:\n"
        "    print(sorted({'tensorflow', 'mlflow'} & set(sys.modules)), file=sys.stdout)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"train: error: {path}: split.max_pixel: unknown key (did you mean 'max_pixels'? "
        "allowed: mode, ratios, seed, restarts, max_file_mb, max_pixels, min_side, max_aspect, "
        "out_dir)",
        f"train: error: {path}: train.epochs = 'ten': input should be a valid integer, unable "
        "to parse string as an integer",
    ]
    assert result.stdout.strip() == "[]", "nothing heavy was loaded, no MLflow run was opened"
    assert not (tmp_path / "mlruns").exists()


def test_exit_codes_user_error_one_line_bug_keeps_its_traceback_and_exits_70(capsys):
    @errors.reports_user_errors("stage")
    def user_problem(argv=None) -> int:
        raise errors.MissingInputError("data/split/train.csv not found: run `dvc repro split`")

    @errors.reports_user_errors("stage")
    def bug(argv=None) -> int:
        raise ZeroDivisionError("a bug")

    assert user_problem([]) == 1
    assert capsys.readouterr().err == (
        "stage: error: data/split/train.csv not found: run `dvc repro split`\n"
    )
    assert bug([]) == errors.EXIT_BUG == 70
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert err[-2:] == [
        "ZeroDivisionError: a bug",
        "stage: internal error: this is a bug in petscan (exit code 70); please report it with "
        "the traceback above",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "petscan.cli", "predict", "x.png", "--model", "absent.keras"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


def test_the_shipped_params_yaml_is_the_schema_defaults():
    """One source of truth: every default in the schema is the value params.yaml ships."""
    shipped = validate(yaml.safe_load((REPO / "params.yaml").read_text()))
    drop = ("tune.space.", "weights.sources")  # free-form search space; the sources list
    flat = {k: v for k, v in config.flatten(plain(shipped)).items() if not k.startswith(drop)}
    expected = {
        k: v for k, v in config.flatten(plain(defaults())).items() if not k.startswith(drop)
    }
    assert flat == expected


# --------------------------------------------------------------------------- issue 19, class 4


def test_train_val_and_test_each_need_a_ratio_above_zero():
    for ratios in ([1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]):
        assert problems({"split": {"ratios": ratios}}) == [
            f"p.yaml: split.ratios = {ratios}: train, val and test each need a ratio above 0 "
            "(train fits the model, val picks its epoch for early stopping, test gives the "
            "final scores)"
        ]
    assert validate({"split": {"ratios": [0.98, 0.01, 0.01]}}).split.ratios[1] == 0.01


def test_per_class_values_must_match_data_classes():
    two = {"a": "A", "b": "B", "b2": "B"}  # two classes: A, B (two folders map to B)
    assert problems({"data": {"classes": two}, "train": {"class_weight": [1.0, 2.0, 3.0]}}) == [
        "p.yaml: train.loss.alpha = [0.5, 0.3, 0.2] (the default): needs one value a class, "
        "in the order of data.classes (2: A, B), got 3",
        "p.yaml: train.class_weight = [1.0, 2.0, 3.0]: needs one value a class, in the order "
        "of data.classes (2: A, B), got 3",
    ]
    assert problems({"train": {"loss": {"alpha": [0.5, 0.5]}}}) == [
        "p.yaml: train.loss.alpha = [0.5, 0.5]: needs one value a class, in the order of "
        "data.classes (3: No cancer, Breast cancer, Prostate cancer), got 2"
    ]
    assert problems({"data": {"classes": {"a": "A", "b": "A"}}, "train": {"loss": {"alpha": 0.5}}})
    assert problems({"data": {"classes": {"a": "A"}}, "train": {"loss": {"alpha": None}}}) == [
        "p.yaml: data.classes names one class (1: A): a classifier needs 2+"
    ]
    for alpha in (None, 0.25, [0.7, 0.3]):
        checked = validate({"data": {"classes": two}, "train": {"loss": {"alpha": alpha}}})
        assert checked.train.loss.alpha == alpha
    # section() checks one section alone, the others at their defaults
    assert section("train", {"loss": {"alpha": [0.6, 0.4]}}).loss.alpha == [0.6, 0.4]


def test_model_input_size_is_bounded():
    assert problems({"model": {"input_size": [20000, 20000]}}) == [
        "p.yaml: model.input_size[0] = 20000: input should be less than or equal to 2048",
        "p.yaml: model.input_size[1] = 20000: input should be less than or equal to 2048",
    ]
    assert problems({"model": {"input_size": [16, 224]}}) == [
        "p.yaml: model.input_size[0] = 16: input should be greater than or equal to 32"
    ]
    assert validate({"model": {"input_size": [2048, 32]}}).model.input_size == [2048, 32]


def test_values_that_only_fail_later_are_refused_by_the_schema():
    """Same class beyond the examples: sizes that run out of memory, Keras' factor ranges."""
    assert problems(
        {
            "synthetic": {"images_per_patient": [3, 1], "base_height": 100_000},
            "featurize": {"batch_size": 100_000, "augment_views": 1000},
            "train": {"batch_size": 5000},
            "evaluate": {"batch_size": 5000},
            "explain": {"batch_size": 5000},
        }
    ) == [
        "p.yaml: synthetic.images_per_patient = [3, 1]: needs [min, max] with min <= max",
        "p.yaml: synthetic.base_height = 100000: input should be less than or equal to 4096",
        "p.yaml: featurize.batch_size = 100000: input should be less than or equal to 1024",
        "p.yaml: featurize.augment_views = 1000: input should be less than or equal to 64",
        "p.yaml: train.batch_size = 5000: input should be less than or equal to 1024",
        "p.yaml: evaluate.batch_size = 5000: input should be less than or equal to 1024",
        "p.yaml: explain.batch_size = 5000: input should be less than or equal to 1024",
    ]
    augmentation = {"zoom": [-1.0, 0.5], "contrast": 1.5, "translation": [0.1, 2]}
    lines = problems({"featurize": {"augmentation": augmentation}})
    assert "p.yaml: featurize.augmentation.zoom[0] = -1.0: input should be greater than -1" in lines
    assert (
        "p.yaml: featurize.augmentation.contrast = 1.5: input should be less than or equal to 1"
    ) in lines
    assert (
        "p.yaml: featurize.augmentation.translation[1] = 2: input should be less than or equal to 1"
    ) in lines


def _nested(key: str, value: object) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value  # type: ignore[return-value]


OPEN = ("train.optimizer.", "tune.pruner.")  # keyword arguments passed on to Keras / Optuna


def _number_keys() -> list[tuple[str, object]]:
    """Every number (or list of numbers) the schema reads, with its default."""
    keys = []
    for key, value in config.flatten(plain(defaults())).items():
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            keys.append((key, value))
    return [*keys, ("tune.timeout_s", 1.0), ("split.max_file_mb", 1.0)]


def test_every_number_is_finite_and_never_true_or_false():
    keys = _number_keys()
    assert len(keys) > 60 and ("split.max_file_mb", 64.0) in keys
    for key, default in keys:
        for bad in (float("inf"), float("-inf"), float("nan"), True, False):
            if isinstance(bad, bool) and key.startswith(OPEN):
                continue  # a bool may be a valid keyword there (Keras' amsgrad)
            value = [bad, *default[1:]] if isinstance(default, list) else bad
            lines = problems(_nested(key, value))
            name = key.rsplit(".", 1)[0] if key.startswith(OPEN) else key
            assert any(line.startswith(f"p.yaml: {name}") for line in lines), (key, bad, lines)
    assert problems({"split": {"max_file_mb": float("inf")}}) == [
        "p.yaml: split.max_file_mb = inf: input should be a finite number"
    ]
    assert problems({"train": {"epochs": True}}) == [
        "p.yaml: train.epochs = True: input should be a number, not true"
    ]
    assert problems({"train": {"optimizer": {"name": "adam", "learning_rate": float("nan")}}}) == [
        "p.yaml: train.optimizer = {'learning_rate': nan, 'name': 'adam'}: learning_rate must "
        "be a finite number, got nan"
    ]
    space = {"train.loss.gamma": {"low": 0.0, "high": float("inf")}}
    assert space_problems({"tune": {"space": space}}) == [
        "p.yaml: tune.space.train.loss.gamma: low, high and step must be finite numbers (not "
        "true/false, .inf or .nan), got low=0.0 high=inf step=None"
    ]


def test_flags_are_true_or_false_only():
    flags = [k for k, v in config.flatten(plain(defaults())).items() if isinstance(v, bool)]
    assert len(flags) >= 4
    for key in flags:
        for bad in (1, 0, "yes", "true"):
            lines = problems(_nested(key, bad))
            assert lines == [f"p.yaml: {key} = {bad!r}: input should be a valid boolean"], lines


def test_a_long_list_of_problems_is_cut_short():
    lines = problems({"train": {"lr_schedule": {"boundaries": ["x"] * 5000}}})
    assert len(lines) == 21 and lines[-1] == "p.yaml: ... and 4980 more problems"
    assert lines[0].startswith("p.yaml: train.lr_schedule.boundaries[0] = 'x': input should be")


def test_every_value_the_search_space_can_give_a_trial_is_checked():
    """`make tune` must not start trials the schema would refuse (they fail one by one)."""
    cases = [
        ("model.dropout", {"low": 0.3, "high": 1.5}, "1.5, which model.dropout refuses: input "
         "should be less than 1"),
        ("train.epochs", {"choices": [10, True]}, "True, which train.epochs refuses: input "
         "should be a number, not true"),
        ("model.input_size", [20000, 20000], "[20000, 20000], which model.input_size refuses"),
        ("train.batch_size", {"low": 8, "high": 4096, "log": True}, "4096, which "
         "train.batch_size refuses: input should be less than or equal to 1024"),
        ("train.loss.alpha", [0.2, {"low": 0.1, "high": 0.5}, 2.0], "2.0, which "
         "train.loss.alpha.2 refuses: input should be less than or equal to 1"),
    ]  # fmt: skip
    for key, spec, expected in cases:
        lines = space_problems({"tune": {"space": {key: spec}}})
        name = f"{key}.2" if key == "train.loss.alpha" else key
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"p.yaml: tune.space.{name}: a trial could get {expected}")
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["tune"]["space"]
    assert len(shipped) > 10 and check_space(validate({"tune": {"space": shipped}}))
