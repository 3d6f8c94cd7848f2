"""Run `trainer.train.train` with test hooks; started as a subprocess by the tests.

Hooks: split the CPU into logical devices (before TensorFlow starts), SIGKILL the
process right after an epoch's backup, save the final weights for comparison,
and write the returned summary as JSON. With `--cli ARGS…` it runs the command
`python -m trainer train ARGS…` itself with the hooks, so the CLI's own defaults
(Vertex AI's `AIP_*` variables, a gs:// `--params`) are the ones used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--run-dir")
    parser.add_argument("--logical-cpus", type=int, default=0)
    parser.add_argument("--kill-after-epoch", type=int, default=0)
    parser.add_argument("--weights-out")
    parser.add_argument("--summary-out")
    parser.add_argument("--cli", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    if args.logical_cpus:
        [cpu] = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus
        )

    from common.params import load_params
    from common.settings import Settings
    from trainer.train import train

    class Hooks(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if args.kill_after_epoch and epoch + 1 == args.kill_after_epoch:
                os.kill(os.getpid(), signal.SIGKILL)  # as hard as a lost machine

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if args.weights_out:
                np.savez(args.weights_out, *[np.asarray(w) for w in self.model.get_weights()])

    if args.cli is not None:
        import functools

        import trainer.train
        from trainer.__main__ import app

        # The command imports `train` when it runs: it gets the one with the hooks.
        trainer.train.train = functools.partial(train, callbacks=[Hooks()])
        app(["train", *args.cli])  # exits with the command's status
    summary = train(
        args.data,
        args.out,
        load_params(args.params),
        Settings(),
        strategy=args.strategy,
        run_dir=args.run_dir,
        callbacks=[Hooks()],
    )
    if args.summary_out:
        Path(args.summary_out).write_text(json.dumps(dataclasses.asdict(summary)))


if __name__ == "__main__":
    main()
