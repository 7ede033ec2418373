"""What a client has done so far: counters per run and the one-line progress snapshot logged and shown."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress reporting (logs here; a Prefect progress artifact in the task layer)."""

    label: str
    done: int
    total: int
    requests: int
    sent: int
    cached: int
    tokens: int
    failures: int
    truncated: int = 0

    def line(self) -> str:
        return (
            f"teacher {self.label}: {self.done}/{self.total} done, {self.requests} requests "
            f"({self.sent} sent, {self.cached} cached), {self.tokens} tokens, {self.failures} failures, "
            f"{self.truncated} truncated"
        )


@dataclass
class Counters:
    requests: int = 0
    sent: int = 0
    cached: int = 0
    tokens: int = 0
    failures: int = 0
    truncated: int = 0
    keys: dict[str, bool] = field(default_factory=dict)  # request key -> answered from cache in this run
