"""Where items come from: one module per `collect.source` (see docs/data.md).

A source turns its configuration into a stream of `Item`s (key, label, loader).
Problems with one item become rejected items with a reason; problems with the
source as a whole (missing folder, unreadable manifest) raise SourceError.
`make_source` builds the one that `params.yaml:collect` asks for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector.base import SourceError
from collector.sources.archive import ARCHIVE_SUFFIXES, ArchiveSource
from collector.sources.core import Context, Source, is_url
from collector.sources.digits import digits_source
from collector.sources.folder import FolderSource
from collector.sources.gcs import GcsSource
from collector.sources.manifest import ManifestSource
from collector.sources.pairs import PairsSource
from common import storage

if TYPE_CHECKING:
    from common.params import CollectParams  # as in collector.collect: for the CLI only

__all__ = [
    "ARCHIVE_SUFFIXES",
    "ArchiveSource",
    "Context",
    "FolderSource",
    "GcsSource",
    "ManifestSource",
    "PairsSource",
    "Source",
    "make_source",
]


def make_source(params: CollectParams) -> Source:
    """The source that `params` configure; SourceError says what is wrong with them."""
    uri = params.uri or ""
    if params.source == "digits":
        return digits_source(params.limit)
    if params.source == "folder":
        if is_url(uri) or storage.is_gcs(uri):
            raise SourceError(
                "collect.uri: source folder takes a local folder; "
                "use source gcs for gs:// or archive/manifest for URLs"
            )
        return FolderSource(name="folder", root=uri)
    if params.source == "gcs":
        if not storage.is_gcs(uri):
            raise SourceError(f"collect.uri: source gcs needs gs://bucket/prefix, got {uri!r}")
        return GcsSource(name="gcs", uri=uri)
    if params.source == "manifest":
        return ManifestSource(name="manifest", uri=uri)
    archive = ArchiveSource(name="archive", uri=uri)
    archive.check()
    return archive
