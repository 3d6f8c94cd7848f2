"""Every value a params.yaml key allows survives train → export → evaluate → register → serve.

Each enumerated option that shapes the exported model is covered by at least one
training, and the trainings are as few as the values allow: every `train.model`
once (transfer models with `weights: none`, never from a hub), each with all five
augmentation kinds on and a different `flip` value; between them, both colour modes,
both resize modes and both compressions. Each chain ends with a prediction through
the API service's LiteRT engine on an image decoded as the API decodes it.

Collect and process run as CLIs (they need no TensorFlow); train, evaluate and
register run in this process, which pays for TensorFlow's import once.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support import write_params

from common.params import load_params

ALL_AUGMENTATIONS = {"rotation": 0.1, "zoom": 0.1, "translation": 0.1, "contrast": 0.2}

# (train.model, flip, process options): together they cover every value of train.model,
# train.augment.flip, process.color_mode, process.resize and process.compression.
CHAINS: list[tuple[str, str, dict[str, Any]]] = [
    ("small_cnn", "horizontal", {"color_mode": "grayscale", "resize": "stretch"}),
    (
        "mobilenet_v3_small",
        "vertical",
        {"color_mode": "rgb", "resize": "pad", "compression": "gzip"},
    ),
    # No val split (allowed): training without validation, and one trace fewer.
    (
        "efficientnet_b0",
        "horizontal_and_vertical",
        {
            "color_mode": "grayscale",
            "resize": "pad",
            "split": {"train": 0.6, "val": 0, "test": 0.4},
        },
    ),
]


def _image(label: str, index: int) -> bytes:
    """A 20×14 RGB PNG: bright on the left or the right half, with noise making it unique."""
    rng = np.random.default_rng(index * 2 + (label == "right"))
    pixels = rng.integers(0, 60, (14, 20, 3), dtype=np.uint8)
    half = slice(0, 10) if label == "left" else slice(10, 20)
    pixels[:, half] = rng.integers(180, 256, (14, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of class sub-folders, as a user would point `collect.source: folder` at."""
    root = tmp_path_factory.mktemp("photos")
    for label in ("left", "right"):
        (root / label).mkdir()
        for index in range(24):
            (root / label / f"{index:02d}.png").write_bytes(_image(label, index))
    return root


def _cli(cwd: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr[-3000:]}"


def _served_prediction(models: Path, name: str, image: bytes) -> tuple[np.ndarray, Any]:
    """Probabilities for `image` from the production version, as the API computes them."""
    from api_service.inputs import prepare
    from api_service.model import Engine, load_served_model
    from api_service.settings import ServingSettings

    served = load_served_model(ServingSettings(models_root=str(models), model_name=name))
    engine = Engine(served.tflite, served.spec.shape, threads=1, max_batch=4)
    engine.warm_up(len(served.labels))
    pixels = prepare(image, served.spec, max_pixels=1_000_000)
    return engine.predict(pixels), served


@pytest.mark.slow
@pytest.mark.parametrize(("model", "flip", "process"), CHAINS, ids=[c[0] for c in CHAINS])
def test_every_option_survives_the_chain(
    model: str,
    flip: str,
    process: dict[str, Any],
    photos: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import keras

    from common.contracts import Preprocess
    from common.settings import Settings
    from trainer.evaluate import evaluate
    from trainer.register import register
    from trainer.train import train

    write_params(
        tmp_path,
        {
            "collect": {"source": "folder", "uri": str(photos)},
            "process": {
                "image_size": 16,
                "min_per_class": 4,
                "split": {"train": 0.5, "val": 0.25, "test": 0.25},
                **process,
            },
            "train": {
                "model": model,
                "weights": "none",
                "epochs": 1,
                "batch_size": 8,
                "augment": {"flip": flip, **ALL_AUGMENTATIONS},
            },
            "registry": {"model_name": "chain", "min_accuracy": 0.0, "min_macro_f1": 0.0},
        },
    )
    _cli(tmp_path, "collector", "--out", "raw", "--no-progress")
    _cli(tmp_path, "processor", "--raw", "raw", "--out", "processed", "--workers", "1")
    params = load_params(tmp_path / "params.yaml")
    data, candidate = str(tmp_path / "processed"), str(tmp_path / "candidate")

    train(data, candidate, params, Settings(), run_dir=str(tmp_path / "run"))

    exported = keras.models.load_model(Path(candidate) / "model.keras")
    names = [layer.name for layer in exported.layers]
    assert not [n for n in names if n.startswith("aug_")], f"augmentation exported: {names}"
    spec = Preprocess.model_validate_json((Path(candidate) / "preprocess.json").read_text())
    assert (spec.color_mode, spec.resize) == (process["color_mode"], process["resize"])

    capfd.readouterr()
    result = evaluate(Path(candidate), data, spec)
    noise = capfd.readouterr().err
    assert "XNNPACK" not in noise and "I0000" not in noise, noise
    test = result.metrics.test
    assert test.examples and test.tflite_accuracy is not None, test
    result.metrics.write(tmp_path / "metrics.json")
    record = register(
        Path(candidate), str(tmp_path / "metrics.json"), str(tmp_path / "models"), params.registry
    )
    assert record.promoted, record

    image = _image("right", 99)
    probabilities, served = _served_prediction(tmp_path / "models", "chain", image)
    assert served.labels == ["left", "right"]
    assert probabilities.shape == (2,)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    from api_service.inputs import prepare

    pixels = prepare(image, spec, max_pixels=1_000_000)
    expected = exported.predict(pixels[np.newaxis].astype(np.float32), verbose=0)[0]
    # LiteRT's kernels (hard-swish, fused batch norm) round differently from TensorFlow's.
    np.testing.assert_allclose(probabilities, expected, atol=1e-2)
