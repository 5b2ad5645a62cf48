"""The schemathesis fuzz runner the fuzz suites share (tests/test_fuzz_http.py, tests/test_fuzz_tracker.py).

Hypothesis generates each operation's cases (derandomized: the same cases every run); schemathesis
serializes them; http.client sends them, pipelined on a few threads so that the generator, the client
and the server keep both cores busy. A check judges every reply; the run collects problems rather than
stopping at the first, and counts the cases it really sent, so a run that generates nothing cannot pass.
"""

from __future__ import annotations

import http.client
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote

import hypothesis
import requests  # schemathesis' own transport, used here to serialize its cases
from hypothesis import HealthCheck, Phase, given, settings

IN_FLIGHT = 4  # requests pipelined at once: the generator never waits for a response


@dataclass
class Outcome:
    cases: int = 0
    by_operation: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    by_operation_status: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, label: str, status: int, problem: str | None) -> None:
        with self._lock:
            self.cases += 1
            self.by_operation[label] += 1
            self.by_status[status] += 1
            self.by_operation_status[(label, status)] += 1
            if problem and len(self.failures) < 50:
                self.failures.append(problem)

    def summary(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        statuses = dict(sorted(self.by_status.items()))
        return f"{self.cases} cases in {self.seconds:.1f}s ({rate:.0f}/s), statuses {statuses}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection (per sending thread). schemathesis builds each request
    (case.as_transport_kwargs, serialized by requests.Request.prepare); http.client sends it at a
    fraction of case.call()'s cost (requests' adapter stack), which is what lets a run reach its case
    count in time."""

    def __init__(self, base_url: str) -> None:
        host, _, port = base_url.removeprefix("http://").partition(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self._reused = False

    def send(self, prepared: requests.PreparedRequest) -> Reply:
        reused = self._reused
        try:
            return self._send(prepared)
        except (http.client.RemoteDisconnected, BrokenPipeError):
            if not reused:
                raise
            # An idle keep-alive connection the server closed before this request: what any client
            # retries on a fresh connection. A response cut short raises something else.
            self._conn.close()
            return self._send(prepared)

    def _send(self, prepared: requests.PreparedRequest) -> Reply:
        headers = {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in prepared.headers.items()}
        try:
            self._conn.request(prepared.method or "GET", prepared.path_url, prepared.body, headers)
            response = self._conn.getresponse()
            body = response.read()  # IncompleteRead if the connection is cut before Content-Length
        except (http.client.HTTPException, OSError):
            self._conn.close()
            self._reused = False
            raise
        self._reused = not response.will_close
        if response.will_close:
            self._conn.close()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


@dataclass(frozen=True)
class Sent:
    """What a check needs of a case: made in the generating thread, read in a sending one."""

    label: str
    method: str
    template: str  # the operation's path, e.g. /{namespace}/{name}/resolve/{revision}/{file}
    params: dict
    request: str  # for the report: method, target, headers and body as sent
    credential: str = ""  # what `authorize` named the credential the case carries

    @classmethod
    def of(cls, case: object, params: dict, prepared: requests.PreparedRequest, credential: str = "") -> Sent:
        op = case.operation  # type: ignore[attr-defined]
        headers = {k: v for k, v in prepared.headers.items() if k.lower() not in _BORING_HEADERS}
        body = prepared.body if isinstance(prepared.body, bytes | str | None) else "..."
        request = f"{prepared.method} {prepared.path_url} headers={headers} body={body!r:.200}"
        return cls(op.label, op.method.upper(), op.path, params, request, credential)


_BORING_HEADERS = {"user-agent", "accept-encoding", "accept", "connection", "x-schemathesis-testcaseid"}

Check = Callable[[Sent, Reply], str | None]


# What a case is sent with beyond what the schema generates (a credential): the case's operation
# label and its number in the run in, (a name for the checks, extra headers) out.
Authorize = Callable[[str, int], tuple[str, dict[str, str]]]


def fuzz(
    schema: object,
    base_url: str,
    cases: int,
    check: Check,
    weight: Callable[[object], int] = lambda op: 1,
    authorize: Authorize | None = None,
    outcome: Outcome | None = None,
) -> Outcome:
    """Run at least `cases` generated cases over every operation of `schema` against `base_url`.

    `weight` shares the cases out between operations; `authorize` adds headers to each case; the
    cases add up in `outcome` if one is given (several schemas, one count)."""
    ops = [result.ok() for result in schema.get_all_operations()]  # type: ignore[attr-defined]
    # Fewest parameters first: an operation whose every case Hypothesis has tried stops early, and
    # the operations after it share what it left of the budget.
    ops.sort(key=lambda op: len(list(op.iter_parameters())) + bool(op.body.items))
    outcome = outcome or Outcome()
    local = threading.local()
    submitted = 0

    def send(sent: Sent, prepared: requests.PreparedRequest) -> None:
        conn = getattr(local, "conn", None) or Connection(base_url)
        local.conn = conn
        try:
            reply = conn.send(prepared)
        except (http.client.HTTPException, OSError, ValueError) as e:
            outcome.record(sent.label, 0, f"{sent.label}: {type(e).__name__} {e}: {sent.request}")
            return
        try:
            problem = check(sent, reply)
        except Exception as e:  # a bug in a check must fail the run, not stop it  # noqa: BLE001
            problem = f"the check raised {e!r}"
        outcome.record(sent.label, reply.status, problem and f"{sent.label}: {problem}: {sent.request}")

    def run_operation(
        op: object, examples: int, pool: ThreadPoolExecutor, pending: list, seed: int | None
    ) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=seed is None,
            database=None,
            phases=[Phase.generate],  # no shrinking: problems are collected, not raised
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy())  # type: ignore[attr-defined]
        def run(case: object) -> None:
            nonlocal submitted
            # schemathesis keeps path parameters percent-encoded, as they go into the URL.
            params = {k: unquote(str(v)) for k, v in (case.path_parameters or {}).items()}  # type: ignore[attr-defined]
            # Serialized here, in the generating thread: schemathesis imports lazily, not thread-safely.
            kwargs = case.as_transport_kwargs(base_url=base_url)  # type: ignore[attr-defined]
            kwargs.pop("cookies", None)
            credential = ""
            if authorize is not None:
                credential, extra = authorize(case.operation.label, submitted)  # type: ignore[attr-defined]
                kwargs["headers"] = {**(kwargs.get("headers") or {}), **extra}
            prepared = requests.Request(**kwargs).prepare()
            sent = Sent.of(case, params, prepared, credential)
            pending.append(pool.submit(send, sent, prepared))
            submitted += 1
            while len(pending) > 4 * IN_FLIGHT:
                pending.pop(0).result()

        (run if seed is None else hypothesis.seed(seed)(run))()

    start = time.monotonic()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        pending: list[Future] = []
        for i, op in enumerate(ops):
            weights = [weight(o) for o in ops[i:]]
            share = math.ceil((cases - submitted) * weights[0] / sum(weights))
            run_operation(op, max(1, share), pool, pending, None)
        # Hypothesis may stop an operation a few cases short of max_examples: top up, reproducibly,
        # from the operation with the most parameters.
        for seed in range(1, 10):
            if submitted >= cases:
                break
            run_operation(ops[-1], cases - submitted, pool, pending, seed)
        for f in pending:
            f.result()
    outcome.seconds += time.monotonic() - start
    return outcome


def assert_clean(outcome: Outcome, logs: dict[str, str], cases: int) -> None:
    """No problem, at least `cases` cases sent, and no traceback in any process' log."""
    print(outcome.summary())
    if os.environ.get("HFBT_FUZZ_VERBOSE"):
        for (label, status), n in sorted(outcome.by_operation_status.items()):
            print(f"  {label:70s} {status} {n}")
    assert not outcome.failures, "\n".join(outcome.failures[:20])
    assert outcome.cases >= cases, f"only {outcome.cases} cases ran: {dict(outcome.by_operation)}"
    for name, text in logs.items():
        assert "Traceback" not in text and "Exception in ASGI" not in text, f"{name}:\n{text[-3000:]}"
