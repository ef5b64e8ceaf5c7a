"""Request/response shapes. Requests are validated strictly (no "5" for 5); responses are written with
orjson from plain dicts (a pydantic response model cost ~0.1 ms a request), the models below only
document them in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

MAX_TOP_K = 100


def request_models(max_query_chars: int, max_batch_items: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The /retrieve and /retrieve/batch request models for this service's limits."""

    class RetrieveRequest(BaseModel):
        model_config = ConfigDict(extra="ignore", title="RetrieveRequest")
        query: StrictStr = Field(
            min_length=1,
            max_length=max_query_chars,
            # in the schema only: the validator below says it in words
            json_schema_extra={"pattern": r"\S"},
            description="free-text search query (at least one non-space character)",
            examples=["cat video"],
        )
        user_id: StrictStr | None = Field(
            None, min_length=1, max_length=256, description="A/B unit; the request id when absent"
        )
        top_k: int = Field(default=100, ge=1, le=MAX_TOP_K, description="an integer; 5.0 is accepted, '5' not")
        request_id: StrictStr | None = Field(
            default=None,
            min_length=1,
            max_length=128,
            pattern=r"^[!-~]+$",
            description="printable ASCII without spaces (it is echoed in the x-request-id header)",
        )

        @field_validator("top_k", mode="before")
        @classmethod
        def _no_strings(cls, v: Any) -> Any:
            # JSON Schema's integer admits 5.0 (so lax int), but a string or bool is a caller bug.
            if isinstance(v, str | bool):
                raise ValueError("Input should be a valid integer")
            return v

        @field_validator("query")
        @classmethod
        def _not_blank(cls, v: str) -> str:
            if not v.strip():
                raise ValueError("query is empty or whitespace only")
            return v

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="ignore", title="BatchRequest")
        items: list[RetrieveRequest] = Field(min_length=1, max_length=max_batch_items)

    return RetrieveRequest, BatchRequest


class Candidate(BaseModel):
    video_id: str
    score: float


class RetrieveResponse(BaseModel):
    request_id: str
    arm: str
    bundle_id: str
    candidates: list[Candidate]
    timings: dict[str, float | bool]


class BatchResponse(BaseModel):
    results: list[RetrieveResponse]


class ErrorBody(BaseModel):
    error: str
    message: str
    details: list[dict[str, Any]] | None = None


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: StrictStr | None = Field(default=None, description="config bundle name to reload; all when absent")
    path: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00]+$",
        description="load this folder for that bundle",
    )


class FeedbackAccepted(BaseModel):
    accepted: int = Field(description="events queued for the feedback log")
    dropped: int = Field(description="events refused because the log's queue was full (counted in crops_feedback)")
