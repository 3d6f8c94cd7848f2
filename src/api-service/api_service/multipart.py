"""The one-file upload read without the general multipart parser.

Nearly every request to /v1/predict is one body in the one layout every client
library writes: a single `file` part with a filename, a Content-Disposition and
usually a Content-Type. Starlette's form parser handles any form, but feeds each
header byte through python-multipart's state machine and spools each file to a
temporary file object: about a quarter of the server process's CPU per request.
`single_file_part` recognises exactly that layout, reading the headers with the
parser's own `parse_options_header` so names and filenames come out as Starlette
gives them, and answers None for anything else (several parts, a form field,
a charset, an unusual header, framing it does not recognise): the caller then parses
the body with Starlette, so any form is answered as it was before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

# Header names as clients write them; anything else goes to the full parser.
_HEADER_NAME = re.compile(rb"^[A-Za-z0-9-]+$")
_CRLF = b"\r\n"
# python-multipart's limits per part, as Starlette applies them (its defaults, which
# tests/test_multipart.py checks): a part beyond them gets the full parser's 400.
MAX_HEADER_COUNT = 8
MAX_HEADER_SIZE = 4096 + 128  # bytes in one header line, without its CRLF


@dataclass(frozen=True)
class FilePart:
    """A file part of a form, as `classify` reads an upload."""

    filename: str
    content_type: str | None
    data: bytes

    async def read(self) -> bytes:
        """The file's bytes (already in memory)."""
        return self.data


def _decode(value: bytes) -> str:
    """As Starlette decodes a form's names: UTF-8, else Latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _part_body(content_type: str, body: bytes) -> bytes | None:
    """The content of the body's only part (headers and data), or None."""
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary or b"charset" in params:
        return None
    opening = b"--" + boundary + _CRLF
    closing = _CRLF + b"--" + boundary + b"--"
    end = body.rfind(closing)
    if not body.startswith(opening) or end < len(opening):
        return None
    if body[end + len(closing) :] not in (b"", _CRLF):
        return None
    content = body[len(opening) : end]
    # A second delimiter means a second part.
    return None if _CRLF + b"--" + boundary in content else content


def _headers(block: bytes) -> dict[bytes, bytes] | None:
    """Lower-cased header names and their values; None for a line it does not take."""
    headers: dict[bytes, bytes] = {}
    lines = block.split(_CRLF)
    if len(lines) > MAX_HEADER_COUNT:
        return None
    for line in lines:
        # A bare CR or LF, or a line over the limit: the full parser refuses the body.
        if len(line) > MAX_HEADER_SIZE or b"\r" in line or b"\n" in line:
            return None
        name, colon, value = line.partition(b":")
        value = value.lstrip(b" ")
        if not colon or not _HEADER_NAME.match(name) or value != value.rstrip():
            return None
        key = name.lower()
        if key in headers:
            return None
        headers[key] = value
    return headers


def single_file_part(content_type: str, body: bytes, field: str) -> FilePart | None:
    """The body's file part when it is exactly one file part named `field`, else None.

    `content_type` is the request's Content-Type header. None does not mean the body
    is invalid, only that the general parser must read it.
    """
    content = _part_body(content_type, body)
    if content is None:
        return None
    block, separator, data = content.partition(_CRLF + _CRLF)
    headers = _headers(block) if separator else None
    if headers is None or b"content-disposition" not in headers:
        return None
    _, options = parse_options_header(headers[b"content-disposition"])
    if b"name" not in options or b"filename" not in options:
        return None
    if _decode(options[b"name"]) != field:
        return None
    part_type = headers.get(b"content-type")
    return FilePart(
        filename=_decode(options[b"filename"]),
        content_type=part_type.decode("latin-1") if part_type is not None else None,
        data=data,
    )
