"""Errors a user sees: each carries a code and one sentence; the CLI prints it, never a traceback."""

from __future__ import annotations


class HfbtError(Exception):
    """code: RepoNotFound, RevisionNotFound, OriginError, TrackerUnreachable, Timeout, Integrity, ..."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
