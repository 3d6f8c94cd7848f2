"""Response schemas of the API, as the OpenAPI document shows them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.")
    confidence: float = Field(ge=0, le=1, description="Probability of `label`.")
    probabilities: dict[str, float] = Field(description="Probability of every class.")
    model_version: str


class FileResult(BaseModel):
    """One file of a batch request: its prediction, or why it was refused."""

    filename: str | None
    status: int = Field(description="The HTTP status this file alone would have got.")
    prediction: Prediction | None = None
    error: ErrorDetail | None = None


class BatchPrediction(BaseModel):
    model_version: str
    results: list[FileResult] = Field(description="One entry per uploaded file, in order.")


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    labels: list[str]
    input: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    optimization: list[dict[str, Any]] | None = Field(
        default=None,
        description="Every optimized variant measured in LiteRT (the version's "
        "optimization.json rows, `served` marking the one served); absent without one.",
    )


class Readiness(BaseModel):
    status: str
    model: str
    model_version: str
    alias: str
    alias_version: str | None = Field(description="The version the alias points at now.")
    load_error: dict[str, Any] | None = Field(
        description="The last failed load while the served version kept serving, if any."
    )


# The error answers a route may give, for its OpenAPI `responses`.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (413, 415, 422, 503)
}


def multipart_body(field: str, description: str, many: bool = False) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its file part(s) itself."""
    part: dict[str, Any] = {"type": "string", "format": "binary", "description": description}
    if many:
        part = {"type": "array", "items": part, "description": description}
    schema = {"type": "object", "required": [field], "properties": {field: part}}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }
