"""Speed and memory of the `ingest` stage: studies per second and peak RSS.

Two sweeps, each case ingested in a fresh child process (its own peak RSS, from
`getrusage`): the number of studies at one volume size (memory should stay flat: one study
is in memory at a time), and the volume size with one study. Every study is a DICOM PET
series (BQML / START, one uncompressed 16-bit file per slice, 4 mm voxels, so no
resampling at `ingest.voxel_mm: 4`) of a smooth synthetic body with a few hot spots,
written by `demo.dicom_pet`; the MIPs are at the default `ingest.angles` (four). The
libraries are imported before the clock starts. Everything is written to a temporary
folder, removed at the end. Example:

    python bench/ingest_speed.py --counts 1 4 16 --sizes 64x64x100 128x128x200 200x200x300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
import nibabel, pydicom, scipy.ndimage  # loaded before the clock starts
from petscan.params.loading import StageParams
from petscan.params.schema import validate
from petscan.pipeline.ingest import SECTIONS, ingest
raw = {"data": {"raw_dir": "out"}, "ingest": {**json.loads(sys.argv[2]), "source_dir": "volumes",
       "labels": "volumes/labels.csv", "out_dir": "out", "report": "report.csv", "key_file": None}}
start = time.perf_counter()
rows = ingest(StageParams(validate(raw), SECTIONS), root=sys.argv[1])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"studies": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
                  "seconds": seconds, "peak_mb": peak}))
"""


def body(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """An SUV volume: an elliptic body (SUV ~1) and a few hot spots (SUV 5 to 15)."""
    nx, ny, nz = shape
    x, y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    inside = ((x / 0.8) ** 2 + (y / 0.6) ** 2 <= 1).astype(np.float32)
    suv = np.repeat(inside[:, :, None], nz, axis=2) * rng.uniform(0.8, 1.2, (1, 1, nz))
    for _ in range(5):
        i, j, k = (int(rng.integers(n // 4, 3 * n // 4)) for n in shape)
        suv[i - 2 : i + 2, j - 2 : j + 2, k - 2 : k + 2] = rng.uniform(5, 15)
    return suv.astype(np.float32)


def write_studies(root: Path, count: int, shape: tuple[int, int, int]) -> None:
    from petscan.demo.dicom_pet import PetSeriesSpec, write_pet_series

    rng = np.random.default_rng(0)
    rows = ["study,class"]
    spec = PetSeriesSpec()
    factor = 75000 / (3.5e8 * np.exp(-np.log(2) * 3600 / spec.half_life_s))
    suv = body(shape, rng)
    for n in range(count):
        name = f"study-{n:03d}"
        write_pet_series(root / "volumes" / name, suv / factor, PetSeriesSpec(patient_id=name))
        rows.append(f"{name},{['No cancer', 'breast cancer', 'prostate cancer'][n % 3]}")
    (root / "volumes" / "labels.csv").write_text("\n".join(rows) + "\n")


def run_case(count: int, shape: tuple[int, int, int], ingest_params: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="petscan-ingest-bench-") as tmp:
        write_studies(Path(tmp), count, shape)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PETSCAN_PSEUDONYM_KEY": "b" * 32}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, tmp, json.dumps(ingest_params)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(shape="x".join(map(str, shape)), per_second=result["ok"] / result["seconds"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--count-size", default="128x128x200", help="volume of the count sweep")
    parser.add_argument("--sizes", nargs="+", default=["64x64x100", "128x128x200", "200x200x300"])
    parser.add_argument("--voxel-mm", type=float, default=4.0)
    args = parser.parse_args(argv)
    params = {"voxel_mm": args.voxel_mm}
    shape = tuple(int(n) for n in args.count_size.split("x"))
    print(f"{'studies':>8} {'volume':>12} {'s':>7} {'studies/s':>10} {'peak MB':>8}")
    cases = [(n, shape) for n in args.counts]
    cases += [(1, tuple(int(n) for n in s.split("x"))) for s in args.sizes]
    for count, size in cases:
        start = time.perf_counter()
        r = run_case(count, size, params)
        assert r["ok"] == count, r
        print(
            f"{count:>8} {r['shape']:>12} {r['seconds']:>7.2f} {r['per_second']:>10.2f} "
            f"{r['peak_mb']:>8.0f}   (case {time.perf_counter() - start:.0f} s with writing)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
