"""Each DVC stage reads exactly the params its `dvc.yaml` entry lists: the stage module's
`SECTIONS` are its `params:`, and the `StageParams` it gets refuses anything else."""

from __future__ import annotations

import importlib

import pytest
import yaml
from conftest import REPO

from petscan.params import loading

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = sorted(DVC["stages"])


def test_every_stage_has_a_module_named_like_it():
    for stage in STAGES:
        module = importlib.import_module(f"petscan.pipeline.{stage}")
        assert callable(module.main) and callable(getattr(module, stage)), stage
        assert DVC["stages"][stage]["cmd"].endswith(f"python stages/{stage}.py")
        script = (REPO / "stages" / f"{stage}.py").read_text()
        assert f"from petscan.pipeline.{stage} import main" in script


@pytest.mark.parametrize("stage", STAGES)
def test_the_sections_a_stage_reads_are_its_dvc_yaml_params(stage):
    module = importlib.import_module(f"petscan.pipeline.{stage}")
    listed = [entry if isinstance(entry, str) else next(iter(entry)) for entry in
              DVC["stages"][stage].get("params", [])]  # fmt: skip
    assert sorted(module.SECTIONS) == sorted(listed), (
        f"stage {stage}: SECTIONS of petscan.pipeline.{stage} and the params: of dvc.yaml "
        "must name the same sections and keys"
    )
    assert len(set(module.SECTIONS)) == len(module.SECTIONS)


@pytest.mark.parametrize("stage", STAGES)
def test_the_view_of_a_stage_gives_what_it_declares_and_nothing_else(stage):
    module = importlib.import_module(f"petscan.pipeline.{stage}")
    view = loading.load_sections(module.SECTIONS, REPO / "params.yaml")
    for name in module.SECTIONS:
        node = view
        for part in name.split("."):
            node = getattr(node, part)  # declared: readable
    undeclared = {"split", "train", "evaluate", "explain", "plot", "tune"} - {
        name.split(".")[0] for name in module.SECTIONS
    }
    for section in undeclared:
        with pytest.raises(AttributeError, match="not among the params this stage declares"):
            getattr(view, section)
