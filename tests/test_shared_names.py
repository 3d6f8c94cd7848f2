"""Files one container writes and another reads are named by one declaration.

The processor writes the shards and the trainer finds them again through
`common.contracts.shard_name` and `is_shard`.
"""

from __future__ import annotations

from pathlib import Path

from processor.shards import ShardWriter
from trainer.inputs import shard_paths


def test_the_trainer_reads_only_the_processor_shards(tmp_path: Path) -> None:
    """A file beside the shards that merely starts with the split's name is not read."""
    writer = ShardWriter(tmp_path, "train", target_bytes=1, compression="none")
    for record in (b"a", b"b"):
        writer.write(record)
    written = writer.finish()
    (tmp_path / "train-notes.tfrecord").write_bytes(b"")
    assert shard_paths(str(tmp_path), "train") == [str(p) for p in written]
    assert [p.name for p in written] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
