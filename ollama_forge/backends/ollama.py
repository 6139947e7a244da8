"""Chat with a model registered in Ollama: ``/api/chat`` streamed through the official client.

The prompt is Ollama's business (its TEMPLATE, SYSTEM and PARAMETERs from the Modelfile); ``system`` here only adds
a system message when the conversation has none, as a user of ``ollama run`` would with ``/set system``. Stats come
from the final chunk (eval_count / eval_duration, done_reason); the time to first token is measured here.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from ..ollama import Ollama
from . import ChatStats, ChatStream, Message

# Loading a large model can take minutes before the first token: allow 10 minutes of silence per read.
CHAT_TIMEOUT = 600.0


class OllamaBackend:
    name = "ollama"

    def __init__(self, model: str, *, host: str | None = None, system: str | None = None,
                 timeout: float | None = None):
        self.model = model
        self.system = system
        self.conn = Ollama(host, timeout=timeout or CHAT_TIMEOUT)

    def close(self) -> None:
        self.conn.close()

    def chat(self, messages: list[Message], options: dict[str, Any] | None = None) -> ChatStream:
        msgs = [dict(m) for m in messages]
        if self.system and not any(m.get("role") == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system})
        return ChatStream(self._run(msgs, options))

    def _run(self, msgs: list[Message], options: dict[str, Any] | None) -> Iterator[Any]:
        t0 = time.perf_counter()
        first: float | None = None
        final = None
        with self.conn.errors(f"chat with {self.model}"):
            for part in self.conn.client.chat(self.model, messages=msgs, options=options or None, stream=True):
                piece = (part.message.content or "") if part.message else ""
                if piece:
                    if first is None:
                        first = time.perf_counter()
                    yield piece
                if part.done:
                    final = part
        end = time.perf_counter()
        tokens = int(getattr(final, "eval_count", 0) or 0)
        eval_ns = int(getattr(final, "eval_duration", 0) or 0)
        yield ChatStats(
            backend=self.name, model=self.model, prompt_tokens=int(getattr(final, "prompt_eval_count", 0) or 0),
            tokens=tokens, tokens_per_s=tokens / (eval_ns / 1e9) if eval_ns else 0.0,
            ttft_s=(first or end) - t0, total_s=end - t0,
            done_reason=str(getattr(final, "done_reason", "") or ("stop" if final else "incomplete")))

