"""Write a source's images into the raw store with a manifest and a report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from common import storage
from common.contracts import COLLECT_REPORT, MANIFEST, ManifestItem, Rejected, write_manifest
from common.images import ImageDecodeError, decode_image, sha256_hex

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}


@dataclass
class CollectResult:
    """What a collection run did."""

    out: str
    written: int = 0
    already_present: int = 0
    duplicates: int = 0
    failed: list[Rejected] = field(default_factory=list)
    items: list[ManifestItem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.items)


def collect(items: Iterable[tuple[str, bytes]], out: str, source: str) -> CollectResult:
    """Store each `(label, bytes)` item under `images/<label>/<sha256>.<ext>`.

    Files already present (same content hash) are not rewritten, so re-runs are
    idempotent; the manifest and report are rewritten atomically at the end.
    """
    result = CollectResult(out=out)
    existing = set(storage.list_files(storage.join(out, "images")))
    seen: set[tuple[str, str]] = set()
    for index, (label, data) in enumerate(items):
        name = f"{source}[{index}]"
        try:
            image = decode_image(data)
        except ImageDecodeError as exc:
            result.failed.append(Rejected(item=name, reason=str(exc)))
            continue
        ext = EXTENSIONS.get(image.format or "")
        if ext is None:
            result.failed.append(Rejected(item=name, reason=f"unsupported format {image.format}"))
            continue
        digest = sha256_hex(data)
        if (label, digest) in seen:
            result.duplicates += 1
            continue
        seen.add((label, digest))
        rel = f"images/{label}/{digest}.{ext}"
        target = storage.join(out, rel)
        if target in existing:
            result.already_present += 1
        else:
            storage.write_bytes(target, data)
            result.written += 1
        result.items.append(
            ManifestItem(
                path=rel,
                label=label,
                sha256=digest,
                source=source,
                width=image.width,
                height=image.height,
            )
        )
    write_manifest(storage.join(out, MANIFEST), result.items)
    storage.write_json(
        storage.join(out, COLLECT_REPORT),
        {
            "source": source,
            "items": result.total,
            "written": result.written,
            "already_present": result.already_present,
            "duplicates": result.duplicates,
            "failed": [f.model_dump() for f in result.failed],
        },
    )
    return result
