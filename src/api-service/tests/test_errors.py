"""The error codes: one enum covers every code an answer can carry."""

from __future__ import annotations

import json

from api_service.errors import ErrorCode, error_body
from api_service.inputs import STATUS
from common import images


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def test_every_refusal_of_the_input_contract_has_an_error_code() -> None:
    """An upload refused for a reason the enum lacks would turn into a 500."""
    codes = {cls.code for cls in _subclasses(images.ImageDecodeError)} | set(STATUS)
    assert codes <= set(ErrorCode), codes - set(ErrorCode)


def test_the_error_body_is_the_documented_shape() -> None:
    body = json.loads(error_body(ErrorCode.TOO_LARGE, "upload is 2 MB (> 1 MB)"))
    assert body == {"error": {"code": "too_large", "message": "upload is 2 MB (> 1 MB)"}}
