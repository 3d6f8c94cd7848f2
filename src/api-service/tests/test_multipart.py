"""The one-file fast reader gives what Starlette's form parser gives, or steps aside."""

from __future__ import annotations

import asyncio

import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from api_service.multipart import MAX_HEADER_COUNT, MAX_HEADER_SIZE, FilePart, single_file_part

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
DATA = b"\x89PNG\r\n\x1a\n-- not really a png\r\n--b0und but no delimiter"


def body(*parts: bytes, epilogue: bytes = b"\r\n") -> bytes:
    """A multipart body of the given parts (each: header lines, blank line, data)."""
    delimiter = f"--{BOUNDARY}".encode()
    inner = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    return inner + delimiter + b"--" + epilogue


def part(disposition: str, data: bytes = DATA, *headers: str) -> bytes:
    lines = [f"Content-Disposition: {disposition}", *headers]
    return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + data


def starlette_file(content_type: str, raw: bytes) -> tuple[str | None, str | None, bytes]:
    """(filename, content type, data) of the first `file` part as Starlette parses it."""

    async def parse() -> tuple[str | None, str | None, bytes]:
        async def stream():  # type: ignore[no-untyped-def]
            yield raw

        form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        upload = form.getlist("file")[0]
        assert isinstance(upload, UploadFile)
        return upload.filename, upload.content_type, await upload.read()

    return asyncio.run(parse())


@pytest.mark.parametrize(
    "raw",
    [
        body(part('form-data; name="file"; filename="digit.png"', DATA, "Content-Type: image/png")),
        body(part('form-data; name="file"; filename="d.png"', DATA), epilogue=b""),
        body(part("form-data; name=file; filename=plain.png", DATA, "content-type: image/png")),
        body(part('form-data; name="file"; filename="C:\\\\Users\\\\me\\\\digit.png"', DATA)),
        body(part('form-data; name="file"; filename="a \\"quoted\\" name.png"', DATA)),
        body(part('form-data; name="file"; filename="chiffre-é.png"', b"")),
        body(part('form-data; name="file"; filename="x.png"', DATA, "X-Extra:  spaced")),
    ],
    ids=["curl", "no-epilogue", "unquoted", "ie-path", "escaped-quote", "utf8-empty", "extra"],
)
def test_the_one_file_layout_reads_as_starlette_reads_it(raw: bytes) -> None:
    found = single_file_part(CONTENT_TYPE, raw, "file")
    assert isinstance(found, FilePart)
    assert (found.filename, found.content_type, found.data) == starlette_file(CONTENT_TYPE, raw)
    assert asyncio.run(found.read()) == found.data


ONE = part('form-data; name="file"; filename="digit.png"', DATA, "Content-Type: image/png")
NAMED = 'form-data; name="file"; filename="d.png"'


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        (CONTENT_TYPE, body(ONE, ONE)),  # two parts
        (CONTENT_TYPE, body(part('form-data; name="file"'))),  # a field, not a file
        (CONTENT_TYPE, body(part('form-data; name="image"; filename="d.png"'))),  # other name
        (CONTENT_TYPE, body(part('form-data; filename="d.png"'))),  # no name
        (CONTENT_TYPE + "; charset=latin-1", body(ONE)),  # a charset changes decoding
        ("multipart/mixed; boundary=b0undary", body(ONE)),
        ("multipart/form-data", body(ONE)),  # no boundary
        (CONTENT_TYPE, b"preamble\r\n" + body(ONE)),
        (CONTENT_TYPE, body(ONE, epilogue=b"\r\ntrailing")),
        (CONTENT_TYPE, body(ONE)[:-12]),  # no closing delimiter
        (CONTENT_TYPE, body(ONE + b"\r\n--b0undary\r\nX: y")),  # a delimiter in the data
        (CONTENT_TYPE, body(part(NAMED, DATA, " folded"))),
        (
            CONTENT_TYPE,
            body(part(NAMED, DATA, "A: 1", "a: 2")),
        ),
        (CONTENT_TYPE, body(part(NAMED, DATA, "X: y "))),
        (CONTENT_TYPE, body(b"Content-Type: image/png\r\n\r\n" + DATA)),  # no disposition
        (CONTENT_TYPE, body(b"no blank line")),
        (CONTENT_TYPE, b""),
        # Bodies Starlette's parser refuses (400): never accepted by the one-file reader.
        (CONTENT_TYPE, body(part('form-data; name="file"; filename="a\rb.png"'))),
        (CONTENT_TYPE, body(part('form-data; name="file"; filename="a\nb.png"'))),
        (CONTENT_TYPE, body(part(NAMED, DATA, *(f"X-{i}: y" for i in range(8))))),
        (CONTENT_TYPE, body(part(f'form-data; name="file"; filename="{"a" * 5000}.png"'))),
    ],
)
def test_anything_else_is_left_to_the_full_parser(content_type: str, raw: bytes) -> None:
    assert single_file_part(content_type, raw, "file") is None


def test_the_header_limits_are_python_multiparts() -> None:
    from python_multipart import multipart

    assert (MAX_HEADER_COUNT, MAX_HEADER_SIZE) == (
        multipart.DEFAULT_MAX_HEADER_COUNT,
        multipart.DEFAULT_MAX_HEADER_SIZE,
    )


@pytest.mark.parametrize(
    "raw",
    [
        body(part('form-data; name="file"; filename="a\rb.png"')),
        body(part(NAMED, DATA, *(f"X-{i}: y" for i in range(8)))),
        body(part(f'form-data; name="file"; filename="{"a" * 5000}.png"')),
    ],
    ids=["bare-cr", "nine-headers", "long-line"],
)
def test_what_the_reader_declines_here_starlette_refuses(raw: bytes) -> None:
    # The reader must never be looser than the parser it stands in for.
    from python_multipart.exceptions import MultipartParseError
    from starlette.formparsers import MultiPartException

    with pytest.raises((MultiPartException, MultipartParseError)):
        starlette_file(CONTENT_TYPE, raw)
