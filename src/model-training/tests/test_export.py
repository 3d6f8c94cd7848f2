"""Exports are reproducible: the same weights give byte-identical files in every process."""

import subprocess
import sys
from pathlib import Path

from common import storage

# Builds a seeded small model, trains it one step and exports it; run in a fresh
# process each time so that object ids, hash seeds and the clock all differ.
EXPORT = """
import sys, time
from pathlib import Path
import keras, numpy as np
from common.contracts import Lineage, Preprocess
from trainer.export import export_model
from trainer.model import build_model

keras.utils.set_random_seed(3)
spec = Preprocess(image_size=8, color_mode="grayscale")
model = build_model("small_cnn", spec, 3)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 1)).astype("float32")
model.fit(x, np.array([0, 1, 2, 0, 1, 2]), epochs=1, verbose=0)
time.sleep(float(sys.argv[2]))  # a later clock must not show in any file
export_model(model, Path(sys.argv[1]), labels=["a", "b", "c"], spec=spec,
             lineage=Lineage(data_hash="x"), history={"loss": [1.0]})
# The rewritten files still load and compute what the model computes.
import tensorflow as tf
expected = model.predict(x, verbose=0)
reloaded = keras.models.load_model(Path(sys.argv[1]) / "model.keras")
np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5)
loaded = tf.saved_model.load(str(Path(sys.argv[1]) / "saved_model"))
served = loaded.serve(x)
np.testing.assert_allclose(served, expected, rtol=1e-5)
"""


def _export(folder: Path, delay: float) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", EXPORT, str(folder), str(delay)],
        capture_output=True,
        text=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        path.relative_to(folder).as_posix(): storage.sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_two_exports_of_the_same_model_are_byte_identical(tmp_path: Path) -> None:
    first = _export(tmp_path / "one", 0.0)
    second = _export(tmp_path / "two", 2.1)  # the zip clock has a 2 s resolution
    assert {"model.keras", "model.tflite", "saved_model/saved_model.pb"} <= set(first)
    differing = sorted(name for name in first if first[name] != second.get(name))
    assert not differing, f"files that differ between two identical exports: {differing}"
