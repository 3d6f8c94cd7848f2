"""Export a trained model in every format the contract names, byte-reproducibly.

The same weights give the same bytes in every process and at every time: DVC hashes
the candidate, so any per-save noise (clock, object ids, set order) would make a
re-run of unchanged inputs look like a new model and leave `dvc.lock` changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from common import storage
from common.contracts import (
    CURVES,
    KERAS_FILE,
    LABELS,
    PREPROCESS,
    RUN_RECORD,
    SAVED_MODEL_DIR,
    TFLITE_FILE,
    Lineage,
    Preprocess,
)
from trainer.lineage import write_lineage, write_run_record

# Zip entry times: the zip format's earliest date, as reproducible-build tools use.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
SHARED_ID = re.compile(rb'"shared_object_id": (\d+)')


def _export_saved_model(model: keras.Model, path: Path) -> None:
    """A SavedModel whose `serve` (and `serving_default`) signature runs `model` in
    inference mode: float pixels of the model's input shape in, class scores out.

    `model.export` traces `model.__call__` without `training=False`, and then a
    nested backbone's stochastic depth (EfficientNet's `block*_drop` Dropout layers)
    keeps its random ops, which the TFLite converter refuses (ERROR_NEEDS_FLEX_OPS).
    """
    [inputs] = model.inputs
    signature = tf.TensorSpec((None, *inputs.shape[1:]), inputs.dtype, name="pixels")
    root = tf.Module()
    # The SavedModel numbers the variables (checkpoint order, graph captures) in the
    # order it first meets them from `root`. Keras's `ExportArchive` hands them over in
    # the traced function's order, which changes from process to process; listed here
    # in the model's order instead, two exports of the same weights are byte-identical
    # (tests/test_export.py).
    root.model_variables = [variable.value for variable in model.variables]
    root.serve = tf.function(
        lambda pixels: model(pixels, training=False), input_signature=[signature], autograph=False
    )
    serve = root.serve.get_concrete_function()
    tf.saved_model.save(root, str(path), signatures={"serve": serve, "serving_default": serve})


def _renumber_shared_ids(config: bytes) -> bytes:
    """Replace Keras's `shared_object_id`s (Python object ids) by 0, 1, 2… in order of use."""
    numbers: dict[bytes, int] = {}

    def number(match: re.Match[bytes]) -> bytes:
        return b'"shared_object_id": %d' % numbers.setdefault(match[1], len(numbers))

    return SHARED_ID.sub(number, config)


def normalize_keras_archive(path: Path) -> None:
    """Rewrite a `.keras` zip without its save time, entry dates or object ids.

    What is left (config, weights, Keras version) is what loading uses.
    """
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = _renumber_shared_ids(data)
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            entry.compress_type = info.compress_type
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data)
    storage.atomic_write_bytes(path, buffer.getvalue())


def derive_fingerprint_uuid(saved_model: Path) -> None:
    """Replace the SavedModel fingerprint's random `uuid` by one derived from its hashes.

    TensorFlow draws the uuid at random on every save; deriving it from the content
    hashes that sit beside it keeps "same content, same id" and the bytes reproducible.
    """
    from tensorflow.core.protobuf import fingerprint_pb2

    path = saved_model / "fingerprint.pb"
    if not path.is_file():
        return
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(path.read_bytes())
    fingerprint.ClearField("uuid")
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    storage.atomic_write_bytes(path, fingerprint.SerializeToString(deterministic=True))


def export_model(
    model: keras.Model,
    folder: Path,
    *,
    labels: list[str],
    spec: Preprocess,
    lineage: Lineage,
    history: dict[str, list[float]],
    with_tflite: bool = True,
) -> None:
    """Write `.keras`, SavedModel, float32 `.tflite` and the JSON sidecars into `folder`.

    `lineage` is split: the per-run facts go to the run record (trainer.lineage).

    `with_tflite=False` skips the conversion (non-chief workers export only to keep
    every worker's saving steps alike, and discard the result).
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / KERAS_FILE)
    normalize_keras_archive(folder / KERAS_FILE)
    _export_saved_model(model, folder / SAVED_MODEL_DIR)
    derive_fingerprint_uuid(folder / SAVED_MODEL_DIR)
    if with_tflite:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder / SAVED_MODEL_DIR))
        (folder / TFLITE_FILE).write_bytes(converter.convert())
    storage.write_json(folder / LABELS, labels)
    spec.write(folder / PREPROCESS)
    storage.write_json(folder / CURVES, history)
    write_lineage(folder, lineage)
    write_run_record(folder, lineage)  # last: it records the hash of everything above


def export_atomically(
    model: keras.Model,
    out: str,
    on_staged: Callable[[Path], None] | None = None,
    **sidecars: Any,
) -> None:
    """Export into a folder built beside `out`, then swap it in (`storage.building`).

    `on_staged` sees the complete staged folder before it goes live. On `gs://` the
    run record, which hashes everything else, is uploaded last.
    """
    with storage.building(out, last=RUN_RECORD) as staging:
        export_model(model, staging, **sidecars)
        if on_staged is not None:
            on_staged(staging)
