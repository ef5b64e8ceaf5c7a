"""One error type with a kind enum; every layer (CLI, HTTP) maps kinds to its own codes in one place."""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """What went wrong, independent of how it is reported."""

    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    BUNDLE_INVALID = "bundle_invalid"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    INCOMPATIBLE = "incompatible"
    PARITY_FAILED = "parity_failed"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAUTHORIZED = "unauthorized"
    BACKEND = "backend"
    CONFIG_INVALID = "config_invalid"


class CropsError(Exception):
    """An error with a kind and a one-line, human-readable reason."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message
