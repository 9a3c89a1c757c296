"""Is this file the configured backbone's weights? HDF5 inspection and the load check.

`check_weights` refuses any file that is not a legacy Keras `.h5` whose layers load, in
order, into the configured no-top backbone, and compares its first, middle and last
tensors with what Keras loaded. `describe_file` says what a wrong file is instead, by its
type and size only: never its bytes, which may hold a secret.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from petscan.model import backbones
from petscan.weights.drive import html_title
from petscan.weights.errors import WeightsError, error_text

Layers = list[tuple[str, list[str], list[tuple[int, ...]]]]


def h5_weight_layers(path: str | Path) -> Layers:
    """(layer name, weight names, weight shapes) for each layer with weights, in file order,
    the way Keras' legacy loader sees a whole-model or weights-only `.h5` file."""
    with h5py.File(path, "r") as fh:
        group = _weights_group(fh)
        layers = []
        for name in _str_list(group.attrs["layer_names"]):
            names = _str_list(group[name].attrs.get("weight_names", []))
            if names:
                layers.append((name, names, [tuple(group[name][w].shape) for w in names]))
    return layers


def describe_file(path: str | Path) -> str:
    """What a file looks like, in words: HDF5 model summary, HTML page, archive, text..."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "an empty file"
    with path.open("rb") as fh:
        head = fh.read(4096)
    if h5py.is_hdf5(str(path)):
        try:
            return _describe_h5(path)
        except (OSError, KeyError) as exc:  # h5py cannot open or read it
            return f"a damaged or truncated HDF5 file of {size} bytes ({error_text(exc)})"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low[:1024]:
        return f"an HTML page (title: {html_title(head)!r}), not HDF5"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, not HDF5 (extract the .h5 file from it)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file, not HDF5 (decompress it first)"
    # Never quote the bytes: a wrong file may hold a secret (a key, a token) and this
    # text goes into logs and CI output.
    sample = head[:200]
    if sample.isascii() and all(c >= 32 or c in b"\r\n\t" for c in sample):
        kind = "a JSON text file" if sample.lstrip()[:1] in (b"{", b"[") else "a text file"
        return f"{kind} of {size} bytes, not HDF5"
    return f"{size} bytes of binary data that is not HDF5"


def _describe_h5(path: Path) -> str:
    with h5py.File(path, "r") as fh:
        keys = list(fh.keys())
        has_layers = "layer_names" in fh.attrs or (
            "model_weights" in fh and "layer_names" in fh["model_weights"].attrs
        )
    if not has_layers:
        return f"an HDF5 file that is not a legacy Keras model (top-level keys: {keys[:6]})"
    layers = h5_weight_layers(path)
    tensors = sum(len(names) for _, names, _ in layers)
    kinds = list(dict.fromkeys(re.sub(r"_?\d+$", "", name) for name, _, _ in layers))
    text = (
        f"a Keras model with {len(layers)} layers holding {tensors} weight tensors "
        f"(layers named like {', '.join(kinds[:5])})"
    )
    top = _classification_top(layers)
    return f"{text}, {top}" if top else text


def _classification_top(layers: Layers) -> str:
    """'a file with a classification top (...)' when the last layer is a dense classifier."""
    if not layers:
        return ""
    name, _, shapes = layers[-1]
    if shapes and len(shapes[0]) == 2:
        return (
            f"a file with a classification top (last layer {name!r}: Dense "
            f"{shapes[0][0]} -> {shapes[0][1]}); a no-top file is needed"
        )
    return ""


def check_weights(
    path: str | Path, backbone: str, input_shape: tuple[int, int, int]
) -> dict[str, Any]:
    """Refuse a file that is not the configured no-top backbone's weights.

    The file must load by layer order into `backbones.build_backbone(backbone, input_shape)`
    and its first, middle and last tensors must equal the loaded ones (read with h5py).
    Returns {"layers", "tensors", "checked_tensors"}; raises `WeightsError` saying what the
    file looks like instead.
    """
    path = Path(path)
    if not h5py.is_hdf5(str(path)):
        raise WeightsError(f"not a Keras .h5 weights file: it is {describe_file(path)}")
    try:
        layers = h5_weight_layers(path)
    except (KeyError, OSError) as exc:
        raise WeightsError(f"not a Keras .h5 weights file: it is {describe_file(path)}") from exc
    model = backbones.build_backbone(backbone, input_shape)
    expected = [layer for layer in model.layers if _legacy_weights(layer)]
    n_tensors = sum(len(_legacy_weights(layer)) for layer in expected)
    mismatch = len(layers) != len(expected) or sum(len(n) for _, n, _ in layers) != n_tensors
    if mismatch:
        raise WeightsError(
            f"wrong architecture: the file is {describe_file(path)}; backbone {backbone!r} "
            f"needs {len(expected)} layers holding {n_tensors} weight tensors "
            "(check model.backbone in params.yaml, or the weights source)"
        )
    try:
        model.load_weights(str(path))
    except Exception as exc:  # Keras raises ValueError or others on shape mismatches
        raise WeightsError(
            f"the file does not load into backbone {backbone!r}: {exc} "
            f"(the file is {describe_file(path)})"
        ) from exc
    try:
        checked = _compare_tensors(path, layers, expected)
    except (OSError, KeyError) as exc:
        raise WeightsError(f"cannot read the file's tensors: {error_text(exc)}") from exc
    return {"layers": len(layers), "tensors": n_tensors, "checked_tensors": checked}


def _compare_tensors(path: Path, layers, expected) -> list[str]:
    """Compare the first, middle and last weight tensors of the file and the model."""
    flat = [(i, j) for i, (_, names, _) in enumerate(layers) for j in range(len(names))]
    picks = sorted({0, len(flat) // 2, len(flat) - 1})
    checked = []
    with h5py.File(path, "r") as fh:
        group = _weights_group(fh)
        for k in picks:
            i, j = flat[k]
            name, names, _ = layers[i]
            stored = np.asarray(group[name][names[j]])
            loaded = np.asarray(_legacy_weights(expected[i])[j].numpy())
            if stored.shape != loaded.shape or not np.array_equal(stored, loaded):
                raise WeightsError(
                    f"tensor {names[j]} of the file differs from what Keras loaded into "
                    f"layer {expected[i].name!r}: the file's layer order does not match"
                )
            checked.append(names[j])
    return checked


def _weights_group(fh: h5py.File) -> h5py.Group:
    if "layer_names" not in fh.attrs and "model_weights" in fh:
        return fh["model_weights"]
    return fh


def _str_list(values) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_weights(layer) -> list:
    return layer.trainable_weights + layer.non_trainable_weights
