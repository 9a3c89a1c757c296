"""TensorFlow's start-up notices and its C++ log lines: hidden by default, all back with
PETSCAN_VERBOSE=1."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

CODE = (
    "from petscan.utils import logs\n"
    "logs.setup()\n"
    "logs.import_tensorflow()\n"
    "import sys; print('after', file=sys.stderr)\n"
)


# A graph node with an attribute its op does not define: TensorFlow logs
# "E0000 ... node_def_util.cc:...] NodeDef mentions attribute ..." while it builds the graph,
# long after the import, as it does for the project's own graphs at `make app` and in train.
NODEDEF_ERROR_LINE = (
    "import tensorflow as tf\n"
    "graph = tf.Graph()\n"
    "with graph.as_default():\n"
    "    tf.constant(1.0, name='c')\n"
    "graph_def = graph.as_graph_def()\n"
    "graph_def.node[0].attr['attribute_of_a_newer_tensorflow'].i = 1\n"
    "tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=''), [])\n"
)


def run(extra_env: dict[str, str], code: str = CODE) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "PETSCAN_VERBOSE"))}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(REPO / "src"), **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stderr


def test_startup_notices_are_hidden_and_come_back_when_verbose():
    assert run({}) == "after\n"
    verbose = run({"PETSCAN_VERBOSE": "1"})
    notices = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard")
    assert any(notice in verbose for notice in notices), verbose
    assert verbose.endswith("after\n")


def test_tensorflow_error_lines_after_the_import_are_hidden_and_come_back_when_verbose():
    code = CODE + NODEDEF_ERROR_LINE + "print('done', file=sys.stderr)\n"
    # 2 is what the Makefile exported and what many shells set: it let ERROR lines through
    assert run({"TF_CPP_MIN_LOG_LEVEL": "2"}, code) == "after\ndone\n"
    assert run({}, code) == "after\ndone\n"
    verbose = run({"PETSCAN_VERBOSE": "1"}, code)
    assert "NodeDef mentions attribute attribute_of_a_newer_tensorflow" in verbose, verbose
    assert verbose.endswith("done\n")
