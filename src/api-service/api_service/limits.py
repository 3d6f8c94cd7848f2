"""The size limits serving applies: the served model's, under the operator's ceiling.

The processor records the limits training applied (collect.max_bytes and
collect.max_pixels) in the model's preprocess.json. The API accepts what they accept,
so a file that trained is served. MEGA_MAX_UPLOAD_BYTES and MEGA_MAX_IMAGE_PIXELS,
when set, are a hard ceiling for hostile input: the lower of the two applies, and a
ceiling below the model's is logged once when the model loads (see docs/serving.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from api_service.settings import ServingSettings
from common.contracts import Preprocess
from common.images import MAX_BYTES, MAX_PIXELS

# Room for the multipart boundary and part headers around one file: the body limit
# is one file's limit plus this, so a file exactly at the limit is not cut off.
MULTIPART_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """The limits of one uploaded image, and the setting each comes from (for messages)."""

    max_bytes: int
    max_pixels: int
    bytes_setting: str = "collect.max_bytes"


def serving_limits(spec: Preprocess | None, settings: ServingSettings) -> tuple[Limits, list[str]]:
    """The effective limits for a model with `spec` (None: no model loaded yet), and a
    warning for each operator ceiling that refuses files the model was trained on.

    A spec without recorded limits (a model from before they were recorded) gets the
    contract's defaults, which its training used unless params.yaml changed them.
    """
    model_bytes = (spec.max_bytes if spec else None) or MAX_BYTES
    model_pixels = (spec.max_pixels if spec else None) or MAX_PIXELS
    limits = Limits(model_bytes, model_pixels)
    warnings = []
    ceiling = settings.max_upload_bytes
    if ceiling is not None and ceiling < model_bytes:
        limits = Limits(ceiling, model_pixels, "MEGA_MAX_UPLOAD_BYTES")
        warnings.append(
            f"MEGA_MAX_UPLOAD_BYTES={ceiling:,} is below the model's collect.max_bytes="
            f"{model_bytes:,}: files between the two trained but are refused (413)"
        )
    ceiling = settings.max_image_pixels
    if ceiling is not None and ceiling < model_pixels:
        limits = Limits(limits.max_bytes, ceiling, limits.bytes_setting)
        warnings.append(
            f"MEGA_MAX_IMAGE_PIXELS={ceiling:,} is below the model's collect.max_pixels="
            f"{model_pixels:,}: images between the two trained but are refused (413)"
        )
    return limits, warnings if spec is not None else []
