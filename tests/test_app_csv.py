"""The web page's CSV download (built in the browser by `static/app.js`), run in Node.js:
no cell can be read as a formula by a spreadsheet (OWASP "CSV injection")."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess

import pytest

from petscan.serving.app.server import STATIC

NODE = shutil.which("node") or shutil.which("nodejs")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")

# app.js in a sandbox with just enough of a browser for it to load; then toCsv() on `rows`.
RUNNER = r"""
const vm = require("vm");
const fs = require("fs");
const [source, input] = [fs.readFileSync(process.argv[1], "utf8"), JSON.parse(process.argv[2])];
const stub = () => new Proxy({}, { get: (t, k) => (k in t ? t[k] : stub), set: () => true });
const context = vm.createContext({
  document: { getElementById: stub, createElement: stub, body: stub() },
  fetch: () => Promise.reject(new Error("offline")),
  setTimeout, URL, Blob: function () {}, console,
});
vm.runInContext(source, context);
vm.runInContext(`state.info = ${JSON.stringify(input.info)};`, context);
vm.runInContext(`state.rows = ${JSON.stringify(input.rows)};`, context);
process.stdout.write(vm.runInContext("toCsv()", context));
"""


def page_csv(info: dict, rows: list[dict]) -> list[list[str]]:
    if not NODE:
        pytest.skip("no node on PATH (apt-get install nodejs)")
    payload = json.dumps({"info": info, "rows": rows})
    result = subprocess.run(
        [NODE, "-e", RUNNER, str(STATIC / "app.js"), payload],
        capture_output=True,
        timeout=60,
        check=True,
    )  # bytes: text mode would turn the CR inside a quoted cell into LF
    return list(csv.reader(io.StringIO(result.stdout.decode(), newline="")))


def test_csv_cells_that_look_like_formulas_are_neutralised():
    hostile = ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\r=1", "\n=1"]
    model = {
        "name": "=evil",
        "version": "1",
        "run_id": "@run",
        "random_init": False,
        "classes": ["No cancer", "+Breast cancer"],
    }
    rows = [{"file": f"{text}.png", "error": text} for text in hostile]
    rows.append(
        {
            "file": "scan.png",
            "predicted_class": "No cancer",
            "probabilities": {"No cancer": 0.75, "+Breast cancer": 0.25},
            "explained_class": "No cancer",
            "peak": [3, 4],
            "model": model,
        }
    )
    table = page_csv({"model": model}, rows)
    assert table[0][:4] == ["file", "predicted_class", "No cancer", "'+Breast cancer"]
    for line in table:
        for cell in line:
            assert not cell.startswith(FORMULA_STARTS), (cell, line)
    files = [line[0] for line in table[1:]]
    assert files == [f"'{text}.png" for text in hostile] + ["scan.png"]
    errors = [line[-2] for line in table[1:]]
    assert errors == [f"'{text}" for text in hostile] + [""]
    good = table[-1]
    assert good[:4] == ["scan.png", "No cancer", "0.750000", "0.250000"]
    assert good[5:10] == ["3", "4", "'=evil", "1", "'@run"]
