"""End to end, offline: `petscan generate --volumes`, then the one documented override
`dvc exp run -S data.raw_dir=data/ingested` runs ingest -> split -> featurize -> train."""

from __future__ import annotations

import csv

import pytest
from test_pipeline import dvc, tiny_repo

from petscan.demo import generate


@pytest.mark.slow
def test_generated_volumes_go_through_ingest_split_featurize_train(tmp_path):
    def small(params: dict) -> None:
        params["synthetic"]["volumes"] = {
            "counts": {"No cancer": 4, "breast cancer": 4, "prostate cancer": 4},
            "voxel_mm": 20.0,
        }
        params["ingest"].update(voxel_mm=10.0, key_file=None)

    root, env = tiny_repo(tmp_path / "repo", small)
    env["PETSCAN_PSEUDONYM_KEY"] = "synthetic-demo-key-0123456789"
    assert (
        generate.main(
            [
                "--volumes",
                "--params",
                str(root / "params.yaml"),
                "--out",
                str(root / "data/volumes"),
            ]
        )
        == 0
    )
    out = dvc(root, env, "exp", "run", "-S", "data.raw_dir=data/ingested", "train")
    assert "ingest: 12 of 12 studies" in out
    with (root / "reports/ingest/report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    rules = {row["rule"] for row in rows}
    assert {"BQML/START", "BQML/ADMIN", "BQML/NONE", "GML (already SUV)"} <= rules
    assert "CNTS x Philips SUV factor (7053,1000)" in rules
    assert any(row["supplied_by_labels"] == "weight_kg" for row in rows)
    with (root / "data/split/train.csv").open() as handle:
        train = list(csv.DictReader(handle))
    assert train and all(row["path"].startswith("data/ingested/") for row in train)
    assert (root / "models/model.keras").is_file()
