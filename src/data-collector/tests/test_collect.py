import asyncio
import hashlib
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageFile
from support import run_cli, write_params

from collector.collect import INLINE_BYTES, INLINE_PIXELS, CollectOptions, collect, collect_source
from collector.fetch import FetchOptions
from collector.sources import PairsSource
from collector.sources.digits import iter_digits
from common import storage
from common.contracts import read_manifest
from common.params import CollectParams


def test_digits_are_written_under_label_folders_with_hash_names(tmp_path: Path) -> None:
    result = collect(iter_digits(limit=30), out=str(tmp_path), source="digits")
    assert result.total == 30 and result.written == 30
    items = read_manifest(str(tmp_path / "manifest.jsonl"))
    assert len(items) == 30
    for item in items:
        data = (tmp_path / item.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.sha256
        assert item.path == f"images/{item.label}/{item.sha256}.png"
        assert (item.width, item.height) == (8, 8)
    assert {item.label for item in items} == {str(d) for d in range(10)}


# Every (label, PNG sha256) of the default data set as scikit-learn's load_digits() gave
# them: the raw hashes committed in dvc.lock rest on these bytes.
DIGITS_DIGEST = "df3441cc4ed7aa37207c678006efe1a0eca775d84ad311443dc7c4276982a3dd"


def test_packaged_digits_are_the_images_scikit_learn_gave() -> None:
    digest = hashlib.sha256()
    labels = []
    for label, png in iter_digits():
        digest.update(label.encode() + b"\0" + hashlib.sha256(png).digest())
        labels.append(label)
    assert len(labels) == 1797 and sorted(set(labels)) == [str(d) for d in range(10)]
    assert digest.hexdigest() == DIGITS_DIGEST


def test_collector_needs_no_scikit_learn() -> None:
    # The packaged file replaces scikit-learn and SciPy (over 100 MB) in the image.
    code = (
        "import sys; sys.modules['sklearn'] = sys.modules['scipy'] = None\n"
        "from collector.sources.digits import iter_digits\n"
        "print(sum(1 for _ in iter_digits()))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1797"


def test_collecting_imports_httpx_only_for_an_archive_url() -> None:
    # Start-up time: httpx (and the CLI tools it pulls in) only for the archive stream.
    code = (
        "import sys\n"
        "import collector.collect, collector.sources\n"
        "print(sorted(m for m in ('httpx', 'rich', 'typer') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Loaded only by what needs them, not by a collection of 8-bit images up to its end:
# NumPy (the digits source, images deeper than 8 bits), params.yaml's models and YAML
# (the CLI), tenacity (a failed request). Together they were about half the collector's
# start-up (docs/performance.md, "Collection vs img2dataset").
LATE_MODULES = ("numpy", "yaml", "common.params", "tenacity")


def test_a_collection_of_8_bit_images_loads_no_numpy_params_or_retry_library(
    tmp_path: Path,
) -> None:
    code = (
        "import io, sys\n"
        "import collector.collect, collector.sources\n"
        "from PIL import Image\n"
        "def png(mode, color):\n"
        "    buffer = io.BytesIO()\n"
        "    Image.new(mode, (300, 200), color).save(buffer, format='PNG')\n"
        "    return buffer.getvalue()\n"
        "items = [('a', png('L', 7)), ('b', png('RGB', (1, 2, 3))), ('c', png('P', 3))]\n"
        "result = collector.collect.collect(items, sys.argv[1], 'test')\n"
        "assert result.written == 3, result\n"
        f"print(sorted(m for m in {LATE_MODULES!r} if m in sys.modules))"
    )
    command = [sys.executable, "-c", code, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def flat_png(width: int, height: int) -> bytes:
    """A one-colour PNG: a few hundred bytes however many pixels it declares."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 7).save(buffer, format="PNG")
    return buffer.getvalue()


def decoding_threads(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The threads Pillow decodes in from now on, one entry per decode, in order.

    Every format's decoding reaches ImageFile.load, which this spies on.
    """
    threads: list[threading.Thread] = []
    load = ImageFile.ImageFile.load

    def spy(image: ImageFile.ImageFile) -> object:
        threads.append(threading.current_thread())
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return threads


@pytest.mark.parametrize(
    ("width", "height", "on_the_loop"),
    [(32, 32, True), (256, 256, True), (257, 256, False), (4000, 4000, False)],
)
def test_a_small_file_is_decoded_on_the_event_loop_only_if_it_declares_few_pixels(
    width: int, height: int, on_the_loop: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 4000x4000 PNG is 24 KB and decodes to 16 MB: tens of ms that would stall every
    # download on the loop.
    data = flat_png(width, height)
    assert len(data) <= INLINE_BYTES
    assert (width * height <= INLINE_PIXELS) is on_the_loop
    decoded_in = decoding_threads(monkeypatch)
    result = collect([("a", data)], out=str(tmp_path), source="test")
    assert (result.written, result.failed) == (1, [])
    assert (result.items[0].width, result.items[0].height) == (width, height)
    loop_thread = threading.current_thread()  # collect() runs its event loop here
    assert decoded_in and all((thread is loop_thread) is on_the_loop for thread in decoded_in)


@pytest.mark.parametrize(
    ("mode", "value", "fmt"), [("I;16", 300, "PNG"), ("I", 70_000, "TIFF"), ("F", 0.5, "TIFF")]
)
def test_a_small_deep_image_is_decoded_in_a_thread(
    mode: str, value: float, fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its check imports NumPy the first time: a stall the loop must not take.
    buffer = io.BytesIO()
    Image.new(mode, (16, 16), value).save(buffer, format=fmt)
    assert len(buffer.getvalue()) <= INLINE_BYTES
    decoded_in = decoding_threads(monkeypatch)
    result = collect([("a", buffer.getvalue())], out=str(tmp_path), source="test")
    assert (result.written, result.failed) == (1, [])
    assert decoded_in and threading.current_thread() not in decoded_in


def test_an_image_over_the_pixel_limit_is_refused_by_its_header_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(image: ImageFile.ImageFile) -> None:
        raise AssertionError("decoded an image whose header is over the limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    options = CollectOptions(max_pixels=10_000)
    source = PairsSource(name="test", pairs=[("a", flat_png(101, 100))])
    result = collect_source(source, str(tmp_path), options)
    assert result.written == 0
    assert [f.reason for f in result.failed] == ["image is 101x100, over the 10,000-pixel limit"]


def test_rerun_writes_nothing_and_gives_identical_files(tmp_path: Path) -> None:
    collect(iter_digits(limit=20), out=str(tmp_path), source="digits")
    manifest = (tmp_path / "manifest.jsonl").read_bytes()
    again = collect(iter_digits(limit=20), out=str(tmp_path), source="digits")
    assert again.written == 0 and again.already_present == 20
    assert (tmp_path / "manifest.jsonl").read_bytes() == manifest


def test_raw_store_is_the_same_bytes_however_it_was_filled(tmp_path: Path) -> None:
    # DVC hashes the raw store: a fresh run and a re-run over existing files must agree,
    # or a fresh clone's `make run` leaves dvc.lock changed.
    fresh, rerun = tmp_path / "fresh", tmp_path / "rerun"
    collect(iter_digits(limit=20), out=str(fresh), source="digits")
    collect(iter_digits(limit=12), out=str(rerun), source="digits")
    collect(iter_digits(limit=20), out=str(rerun), source="digits")
    assert storage.tree_hash(rerun) == storage.tree_hash(fresh)


def test_bad_items_are_reported_not_fatal(tmp_path: Path) -> None:
    good = next(iter_digits(limit=1))
    items = [good, ("3", b"not an image"), ("4", b""), good]
    result = collect(items, out=str(tmp_path), source="test")
    assert result.total == 1 and result.duplicates == 1
    report = json.loads((tmp_path / "collect_report.json").read_text())
    assert [f["reason"] for f in report["failed"]] == [
        "not an image (PNG, JPEG, GIF, BMP, TIFF or WebP)",
        "empty file",
    ]


def test_cli_help_and_unknown_source(tmp_path: Path) -> None:
    assert "--out" in run_cli([sys.executable, "-m", "collector", "--help"], tmp_path).stdout
    write_params(tmp_path, {"collect": {"source": "flickr"}})
    result = subprocess.run(
        [sys.executable, "-m", "collector", "--out", "raw"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2  # a bad params.yaml is a usage error
    [line] = result.stderr.splitlines()
    assert line.startswith("collect: error: params.yaml: invalid parameters: collect.source: ")
    assert "'digits', 'manifest'" in line and not (tmp_path / "raw").exists()


def test_a_smaller_run_prunes_files_no_longer_listed(tmp_path: Path) -> None:
    collect = [sys.executable, "-m", "collector", "--out", "raw", "--no-progress"]
    write_params(tmp_path, {"collect": {"limit": 30}})
    run_cli(collect, tmp_path)
    write_params(tmp_path, {"collect": {"limit": 20}})
    out = run_cli(collect, tmp_path).stdout
    assert "removed 10 file(s) no longer in the manifest" in out
    files = {
        p.relative_to(tmp_path / "raw").as_posix() for p in (tmp_path / "raw/images").rglob("*.png")
    }
    assert files == {item.path for item in read_manifest(str(tmp_path / "raw/manifest.jsonl"))}
    assert len(files) == 20


def test_journal_is_written_in_key_order_not_completion_order(tmp_path: Path) -> None:
    from collector.journal import Journal

    journal = Journal(str(tmp_path), enabled=True)
    for key in ("https://b.example/2.png", "https://a.example/1.png"):  # finished in this order
        journal.record(key, target=f"images/x/{key[-5]}.png")
    journal.close()
    lines = (tmp_path / ".collect_journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == sorted(
        ["https://a.example/1.png", "https://b.example/2.png"]
    )


def test_options_take_every_fetch_setting_from_params() -> None:
    params = CollectParams(
        concurrency=3, timeout=2.5, retries=1, backoff=0.1, max_bytes=10, max_pixels=20, limit=5
    )
    assert CollectOptions.from_params(params) == CollectOptions(
        fetch=FetchOptions(concurrency=3, timeout=2.5, retries=1, backoff=0.1, max_bytes=10),
        max_pixels=20,
        limit=5,
    )


def test_a_killed_writes_temporary_is_removed_and_not_counted(tmp_path: Path) -> None:
    first = collect(iter_digits(limit=3), out=str(tmp_path), source="digits")
    image = tmp_path / first.items[0].path
    leftover = image.with_name(f".{image.name}.k1ll3d.tmp")
    leftover.write_bytes(b"half an image")
    again = collect(iter_digits(limit=3), out=str(tmp_path), source="digits")
    assert again.already_present == 3 and again.written == 0
    assert not leftover.exists()


def test_a_torn_file_the_journal_does_not_vouch_for_is_rewritten(tmp_path: Path) -> None:
    # A power cut can leave a file that was never synced empty under its final name;
    # its item was not journaled, so the next run fetches it and must not trust the name.
    first = collect(iter_digits(limit=5), out=str(tmp_path), source="digits")
    torn, whole = (tmp_path / item.path for item in first.items[:2])
    torn.write_bytes(b"")
    again = collect(iter_digits(limit=5), out=str(tmp_path), source="digits")
    assert (again.written, again.already_present) == (1, 4)
    assert hashlib.sha256(torn.read_bytes()).hexdigest() == torn.stem
    assert hashlib.sha256(whole.read_bytes()).hexdigest() == whole.stem


def test_group_commit_journals_a_batch_only_after_syncing_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector.journal import JOURNAL, GroupCommit, Journal

    events: list[tuple[str, list[str]]] = []
    lines = tmp_path / JOURNAL

    def sync(files: list[str]) -> None:
        journaled = lines.read_text().splitlines() if lines.exists() else []
        events.append(("sync", sorted(files)))
        events.append(("journaled before", journaled))

    monkeypatch.setattr(storage, "sync_files", sync)

    async def main() -> None:
        commits = GroupCommit(Journal(str(tmp_path)))
        await asyncio.gather(*(commits.commit(f"f{i}", {"key": f"k{i}"}) for i in range(5)))
        await commits.commit(None, {"key": "k5"})  # an object upload: nothing to sync
        await commits.close()

    asyncio.run(main())
    # Five items finished together share one sync, before any of them is journaled.
    assert events == [("sync", ["f0", "f1", "f2", "f3", "f4"]), ("journaled before", [])]
    assert [json.loads(line)["key"] for line in lines.read_text().splitlines()] == [
        f"k{i}" for i in range(6)
    ]


def test_group_commit_journals_nothing_when_the_sync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collector.journal import GroupCommit, Journal

    def full_disk(files: list[str]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "sync_files", full_disk)
    journal = Journal(str(tmp_path))

    async def main() -> None:
        commits = GroupCommit(journal)
        with pytest.raises(OSError, match="No space"):
            await commits.commit("f0", {"key": "k0"})
        await commits.close()

    asyncio.run(main())
    assert journal.entries == {}


def test_a_result_prints_its_counts_not_its_rows(tmp_path: Path) -> None:
    # asyncio formats the finished main task, result included, as a run ends: a repr
    # of every manifest row cost about a second for 10,000 images.
    result = collect(iter_digits(limit=40), out=str(tmp_path), source="digits")
    text = repr(result)
    assert "items=40" in text and "written=40" in text
    assert len(text) < 300


def test_a_run_collects_cycles_less_often_and_restores_the_settings(tmp_path: Path) -> None:
    import gc

    from collector import collect as engine

    seen: list[tuple[int, int, int]] = []

    class Progress:
        def set_total(self, total: int | None) -> None:
            pass

        def advance(self, outcome: str) -> None:
            seen.append(gc.get_threshold())

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    engine.collect_source(
        engine.PairsSource(name="digits", pairs=iter_digits(limit=3)),
        str(tmp_path),
        progress=Progress(),
    )
    assert {threshold[0] for threshold in seen} == {engine.GC_YOUNG}
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)
