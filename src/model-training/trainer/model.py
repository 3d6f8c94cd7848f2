"""Keras 3 models. Preprocessing lives inside the model: it takes raw 0–255 pixels.

Two families, chosen by `train.model` in params.yaml:

- `small_cnn`: a compact CNN trained from scratch (the default);
- transfer learning on a `keras.applications` backbone (`mobilenet_v3_small`,
  `efficientnet_b0`): grayscale becomes three channels and small images are
  resized up to the backbone's minimum inside the model, so serving still sends
  the processed pixels unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import keras

from common.contracts import Preprocess
from common.params import AugmentParams
from common.services import ServiceBudget
from common.settings import get_settings


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but are neither cached nor downloadable."""


@dataclass(frozen=True)
class Backbone:
    """A `keras.applications` network usable as a frozen or fine-tuned feature extractor."""

    builder: Callable[..., keras.Model]
    min_size: int  # smallest input side the architecture accepts
    weights_module: str  # keras module holding the weights URL constant
    weights_url_attr: str
    cache_prefix: str  # start of the cached weights' file name (no top)
    kwargs: dict[str, Any]


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v3_small": Backbone(
        builder=keras.applications.MobileNetV3Small,
        min_size=32,
        weights_module="keras.src.applications.mobilenet_v3",
        weights_url_attr="BASE_WEIGHT_PATH",
        cache_prefix="weights_mobilenet_v3_small",
        # Its own Rescaling to [-1, 1] stays inside the network.
        kwargs={"include_preprocessing": True},
    ),
    "efficientnet_b0": Backbone(
        builder=keras.applications.EfficientNetB0,
        min_size=32,
        weights_module="keras.src.applications.efficientnet",
        weights_url_attr="BASE_WEIGHTS_PATH",
        cache_prefix="efficientnetb0_notop",
        kwargs={},  # EfficientNet always rescales and normalizes 0–255 input itself
    ),
}

MODEL_NAMES = ("small_cnn", *BACKBONES)


def augmentation(params: AugmentParams | None) -> list[keras.layers.Layer]:
    """The random layers params asks for (identities outside training)."""
    if params is None:
        return []
    layers: list[keras.layers.Layer] = []
    if params.flip != "none":
        layers.append(keras.layers.RandomFlip(params.flip, name="aug_flip"))
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation, name="aug_rotation"))
    if params.zoom:
        layers.append(keras.layers.RandomZoom(params.zoom, name="aug_zoom"))
    if params.translation:
        layers.append(
            keras.layers.RandomTranslation(
                params.translation, params.translation, name="aug_translation"
            )
        )
    if params.contrast:
        layers.append(
            keras.layers.RandomContrast(params.contrast, value_range=(0, 255), name="aug_contrast")
        )
    return layers


def with_augmentation(
    model: keras.Model, spec: Preprocess, augment: AugmentParams | None
) -> keras.Model:
    """The model to fit: the random layers `augment` asks for, then `model` (shared weights).

    Only `model` is exported. Keras makes random layers identities at inference, but
    their ops stay in the traced graph, and the TFLite converter refuses them
    (ERROR_NEEDS_FLEX_OPS), so they must not be part of the serving model at all.
    Returns `model` itself when no augmentation is asked for.
    """
    layers = augmentation(augment)
    if not layers:
        return model
    inputs = keras.Input(shape=spec.shape, name="pixels")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, model(x), name=f"{model.name}_augmented")


# The small CNN's dense head sees at most this many cells per side (see build_small_cnn).
HEAD_GRID = 4
# The candidate small CNN's conv widths and hidden dense units.
SMALL_CNN_FILTERS = (32, 64)
SMALL_CNN_DENSE = 128


def build_small_cnn(
    spec: Preprocess,
    num_classes: int,
    *,
    filters: Sequence[int] = SMALL_CNN_FILTERS,
    dense: int = SMALL_CNN_DENSE,
) -> keras.Model:
    """A compact CNN that reaches >0.95 on the digits in a few CPU seconds.

    See `small_cnn`; `spec` gives the input shape (raw 0–255 pixels).
    """
    return small_cnn(spec.shape, num_classes, filters=filters, dense=dense)


def small_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    filters: Sequence[int] = SMALL_CNN_FILTERS,
    dense: int = SMALL_CNN_DENSE,
    name: str = "small_cnn",
) -> keras.Model:
    """The small CNN on `input_shape` (height, width, channels) pixels, softmax over classes.

    One conv block per entry of `filters` (3×3 conv with that many channels, then a
    2×2 max pooling), a `dense`-unit hidden layer, then `num_classes` probabilities.
    The defaults are the trainer's candidate; the distillation student
    (`trainer.distill`) is the same shape with smaller widths.

    A Flatten → Dense head on the last map would grow with the image (1024×1024
    pixels: 256×256×64 features, 537 M weights in the first dense layer). So when the
    map is larger than `HEAD_GRID` cells per side, an average pooling first shrinks it
    to between `HEAD_GRID` and `2 × HEAD_GRID - 1` cells per side: the head stays under
    0.5 M weights at any image size, and images of up to 19 pixels (the 16-pixel
    digits) keep exactly the original model.

    Raises:
        ValueError: `filters` is empty or a width is not positive.
    """
    if not filters or min(filters) < 1 or dense < 1:
        raise ValueError(
            f"small_cnn needs at least one conv width and positive widths, got filters="
            f"{list(filters)}, dense={dense}; fix the widths in params.yaml"
        )
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for width in filters:
        x = keras.layers.Conv2D(int(width), 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    side = int(x.shape[1])
    if side > HEAD_GRID:
        pool = side // HEAD_GRID
        x = keras.layers.AveragePooling2D(pool, name="head_grid_pool")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(int(dense), activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def weights_url(backbone: Backbone) -> str:
    """Where Keras downloads the backbone's ImageNet weights from (its own constant)."""
    return str(getattr(importlib.import_module(backbone.weights_module), backbone.weights_url_attr))


def check_weights_available(name: str, timeout: float = 3.0) -> None:
    """Fail at once, with what to do, when ImageNet weights are neither cached nor reachable.

    Keras would otherwise try the download inside the model constructor and only
    fail after its own, much longer, network timeouts.
    """
    backbone = BACKBONES[name]
    cache = _keras_cache_dir()
    if cache.is_dir() and any(p.name.startswith(backbone.cache_prefix) for p in cache.iterdir()):
        return
    url = urlparse(weights_url(backbone))
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise WeightsUnavailableError(
            f"model {name!r} asks for ImageNet weights, which are not in the Keras cache "
            f"({cache}) and cannot be downloaded: {host}:{port} is unreachable ({exc}). "
            "Connect to the network (or copy the weights file into that cache), "
            "or set `train.weights: none` in params.yaml to train the backbone from scratch."
        ) from exc


@contextlib.contextmanager
def bounded_weights_download(name: str) -> Iterator[None]:
    """Bound Keras' weights download and say what failed, in one line.

    Keras downloads with urllib and no timeout: a host that accepts the connection and
    never answers would hang the run for ever. Each socket wait gets the settings'
    read timeout (process-wide, only while the backbone is built); a failed download
    becomes WeightsUnavailableError.
    """
    budget = ServiceBudget.from_settings(get_settings())
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(budget.read_timeout)
    try:
        yield
    except (TimeoutError, ConnectionError, socket.gaierror, urllib.error.URLError) as exc:
        why = (
            f"no answer within {budget.read_timeout:g} s" if isinstance(exc, TimeoutError) else exc
        )
        raise _download_failed(name, str(why)) from exc
    except Exception as exc:
        if type(exc) is not Exception or not str(exc).startswith("URL fetch failure"):
            raise  # not the download: Keras raises a bare Exception only for that
        raise _download_failed(name, str(exc)) from exc
    finally:
        socket.setdefaulttimeout(previous)


def _download_failed(name: str, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"model {name!r} asks for ImageNet weights, which are not in the Keras cache "
        f"({_keras_cache_dir()}) and could not be downloaded ({why}). Connect to the "
        "network (or copy the weights file into that cache), or set `train.weights: none` "
        "in params.yaml to train the backbone from scratch."
    )


def build_transfer(
    name: str,
    spec: Preprocess,
    num_classes: int,
    *,
    weights: str = "imagenet",
    fine_tune_layers: int = 0,
) -> keras.Model:
    """A classification head on a `keras.applications` backbone.

    With ImageNet weights the backbone is frozen (and its batch-norm statistics
    kept in inference mode) except its top `fine_tune_layers` layers (-1: all);
    with `weights="none"` the whole backbone trains, since frozen random features
    are worthless.
    """
    backbone = BACKBONES[name]
    pretrained = weights == "imagenet"
    if pretrained:
        check_weights_available(name)
    inputs = keras.Input(shape=spec.shape, name="pixels")
    x = inputs
    size = max(spec.image_size, backbone.min_size)
    if size != spec.image_size:
        x = keras.layers.Resizing(size, size, name="to_backbone_size")(x)
    if spec.channels == 1:
        # Repeat gray into R, G and B: the backbones expect three channels.
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    with bounded_weights_download(name):
        base = backbone.builder(
            input_shape=(size, size, 3),
            include_top=False,
            weights="imagenet" if pretrained else None,
            pooling="avg",
            **backbone.kwargs,
        )
    if pretrained:
        base.trainable = fine_tune_layers != 0
        if fine_tune_layers > 0:
            for layer in base.layers[:-fine_tune_layers]:
                layer.trainable = False
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        # training=False keeps batch norm in inference mode even while fine-tuning.
        x = base(x, training=False)
    else:
        x = base(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def build_model(
    name: str,
    spec: Preprocess,
    num_classes: int,
    **backbone_options: Any,
) -> keras.Model:
    """The serving model `name` for `spec`'s pixels and `num_classes` outputs (softmax).

    `backbone_options` (`weights`, `fine_tune_layers`) go to `build_transfer`.
    Augmentation is not part of it: see `with_augmentation`.
    """
    if name == "small_cnn":
        return build_small_cnn(spec, num_classes)
    if name in BACKBONES:
        return build_transfer(name, spec, num_classes, **backbone_options)
    raise ValueError(f"unknown model {name!r}; available: {', '.join(MODEL_NAMES)}")
