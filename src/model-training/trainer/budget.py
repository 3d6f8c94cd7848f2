"""Will this training fit in memory? An estimate made before the first step.

A setting the schema allows can still need more memory than the machine has
(`process.image_size: 1024` with a large batch, or a backbone on big images).
Found out by the kernel, that is an out-of-memory kill with no message, possibly
after a long wait and with a large backup left behind. So the trainer estimates
the peak from the built model and refuses at start, with the numbers and a fix.

The estimate, in bytes (float32 everywhere):

- weights: parameters × 4 × 4 — the weights, their gradients and Adam's two
  moments; the TFLite export later holds a few copies of the weights, never more;
- activations: examples per step × the float outputs of every layer × 4 × 2 —
  kept for the backward pass, plus their gradients;
- the decoded-data cache, when the splits are cached in memory.

It is a lower bound on what TensorFlow really takes (workspace buffers, the
runtime itself), so it is compared with a share of the available memory only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras

FLOAT = 4  # bytes of a float32
WEIGHT_COPIES = 4  # weights, gradients, Adam's first and second moments
ACTIVATION_COPIES = 2  # forward outputs kept for the backward pass, and their gradients
USABLE_SHARE = 0.8  # of the available memory; the rest is headroom for TensorFlow itself
GB = 1e9


class TooLargeError(ValueError):
    """The training would not fit in memory; the message gives the estimate and the fix."""


@dataclass(frozen=True)
class Estimate:
    """Peak memory of a training, in bytes, and what it is made of."""

    parameters: int
    weights_bytes: int
    activation_bytes_per_example: int
    examples_per_step: int
    cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.activation_bytes_per_example * self.examples_per_step
            + self.cache_bytes
        )


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, nested models' layers included (a backbone is one layer of the model)."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_layers(layer))
        else:
            found.append(layer)
    return found


def activation_elements(model: keras.Model) -> int:
    """Float outputs of every layer for one example (the batch dimension left out)."""
    total = 0
    for layer in _layers(model):
        outputs = layer.output if isinstance(layer.output, list | tuple) else [layer.output]
        for output in outputs:
            total += math.prod(int(d) for d in output.shape[1:] if d is not None)
    return total


def estimate(model: keras.Model, examples_per_step: int, cache_bytes: int = 0) -> Estimate:
    """The training's peak memory for `examples_per_step` examples in this process."""
    return Estimate(
        parameters=int(model.count_params()),
        weights_bytes=int(model.count_params()) * FLOAT * WEIGHT_COPIES,
        activation_bytes_per_example=activation_elements(model) * FLOAT * ACTIVATION_COPIES,
        examples_per_step=examples_per_step,
        cache_bytes=cache_bytes,
    )


def available_memory() -> int | None:
    """Bytes this process may still allocate: the smaller of the machine's available
    memory and the container's (cgroup) limit; None where neither can be read."""
    limits: list[int] = []
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not limits:
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.virtual_memory().available)
    return max(min(limits), 0)


def check_fits(
    found: Estimate, available: int | None, *, model: str, image: str, batch_size: int
) -> None:
    """Raise `TooLargeError` when `found` exceeds the usable share of `available` bytes.

    `batch_size` is the per-replica `train.batch_size` the message suggests lowering.
    """
    if available is None:
        return
    usable = available * USABLE_SHARE
    if found.total_bytes <= usable:
        return
    per_example = found.activation_bytes_per_example
    room = usable - found.weights_bytes - found.cache_bytes
    scale = found.examples_per_step / batch_size  # replicas sharing this machine's memory
    fitting = int(room // (per_example * scale)) if room > 0 else 0
    fix = (
        f"lower train.batch_size to {fitting} or less, or process.image_size"
        if fitting >= 1
        else "lower process.image_size (or choose a smaller train.model)"
    )
    raise TooLargeError(
        f"{model} on {image} images with train.batch_size {batch_size} needs about "
        f"{found.total_bytes / GB:.1f} GB ({found.parameters / 1e6:.1f} M parameters: "
        f"{found.weights_bytes / GB:.2f} GB with gradients and optimizer state; activations "
        f"{per_example * found.examples_per_step / GB:.1f} GB per step"
        + (f"; data cache {found.cache_bytes / GB:.1f} GB" if found.cache_bytes else "")
        + f"), but only {usable / GB:.1f} GB of the {available / GB:.1f} GB available may be "
        f"used; {fix} in params.yaml"
    )
