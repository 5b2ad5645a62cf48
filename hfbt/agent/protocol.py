"""The agent's local API on the wire: the body of `POST /v1/pull` and the events it streams back.

The request travels as JSON (AgentClient sends it, the agent's api parses it); the reply is one JSON
event per line: {"event": "waiting" | "progress" | "done" | "error", ...} (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from hfbt.errors import HfbtError
from hfbt.manifest import check_repo_id, check_repo_type, check_revision

Emit = Callable[[dict], None]


@dataclass(frozen=True)
class PullRequest:
    repo_id: str
    repo_type: str = "model"
    revision: str = "main"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    timeout: float | None = None  # seconds; None waits as long as the swarm makes progress
    token: str | None = field(default=None, repr=False)  # the caller's Hub token, for private repos

    def validate(self) -> PullRequest:
        try:
            check_repo_type(self.repo_type)
            check_repo_id(self.repo_id)
            check_revision(self.revision)
        except ValueError as e:
            raise HfbtError("BadRequest", str(e)) from None
        return self

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, body: object) -> PullRequest:
        """A validated request from a decoded JSON body; HfbtError("BadRequest") says what is wrong."""
        try:
            if not isinstance(body, dict):
                raise TypeError("expected a JSON object")
            req = cls(
                repo_id=str(body["repo_id"]),
                repo_type=str(body.get("repo_type", "model")),
                revision=str(body.get("revision", "main")),
                include=tuple(body.get("include") or ()),
                exclude=tuple(body.get("exclude") or ()),
                timeout=body.get("timeout"),
                token=body.get("token"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise HfbtError("BadRequest", f"malformed pull request: {e!r}") from None
        return req.validate()
