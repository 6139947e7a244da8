"""Progress, metric and log events: the only link from the core to a UI.

Library stages take an optional ``sink`` (any callable taking an ``Event``). The CLI renders events as progress bars
or as ``--json`` lines; the TUI posts them to widgets. The core never imports either.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Protocol

log = logging.getLogger("ollama_forge")


@dataclasses.dataclass
class Event:
    kind: str  # "stage" | "progress" | "metric" | "log" | "choice"
    stage: str = ""
    message: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    time: float = dataclasses.field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str, ensure_ascii=False)


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...


def null_sink(event: Event) -> None:
    return None


def emit(sink: Sink | None, kind: str, stage: str = "", message: str = "", **data: Any) -> None:
    if sink is not None:
        sink(Event(kind=kind, stage=stage, message=message, data=data))


def choice(what: str, value: Any, reason: str, sink: Sink | None = None, stage: str = "") -> None:
    """Log an automatic choice with its reason: ``device=cpu: no CUDA or MPS``."""
    line = f"{what}={value}: {reason}"
    log.info(line)
    emit(sink, "choice", stage, line, what=what, value=value, reason=reason)


ProgressCallback = Callable[[int, int], None]
