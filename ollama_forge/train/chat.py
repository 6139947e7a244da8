"""Which chat template training renders with, and which tokens end a turn.

Training renders with the chat-format registry's template (``ollama_forge.formats``), the one the Modelfile's
TEMPLATE is proven against, so training and serving agree token for token. ``chat_format: auto`` asks the registry
to detect the format from the tokenizer; a name picks one. The registry installs its training template (with
``{% generation %}`` markers) on the tokenizer and reports tokens it reused, took over or had to add.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ..errors import ForgeError
from ..events import Sink


@dataclasses.dataclass
class ChatSetup:
    name: str  # registry format name
    template: Optional[str]  # Jinja template training renders with (installed on the tokenizer)
    end_tokens: list[str]  # end-of-turn token text(s): labels must contain one of these per example
    end_ids: list[int]
    reason: str
    added_tokens: list[str] = dataclasses.field(default_factory=list)  # added or taken over (reserved slots)
    merged_export_only: bool = False  # the tokenizer changed: the adapter alone no longer fits the original base
    stops: list[str] = dataclasses.field(default_factory=list)
    new_token_ids: list[int] = dataclasses.field(default_factory=list)  # embedding rows to train for new tokens
    default_system: Optional[str] = None  # the detected official template's system prompt, used when none is given
    variant: Optional[str] = None

    @property
    def has_generation_markers(self) -> bool:
        t = (self.template or "").replace("{%-", "{%").replace("-%}", "%}").replace("{% ", "{%").replace(" %}", "%}")
        return "{%generation%}" in t

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "end_tokens": self.end_tokens, "end_ids": self.end_ids, "reason": self.reason,
                "added_tokens": self.added_tokens, "merged_export_only": self.merged_export_only,
                "stops": self.stops, "default_system": self.default_system, "variant": self.variant}


def token_id(tokenizer, text: str) -> Optional[int]:
    """The id of ``text`` when it encodes to exactly one token, else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def setup_chat(tokenizer, chat_format: str = "auto", sink: Sink | None = None, fmt=None,
               reason: Optional[str] = None) -> ChatSetup:
    """Install the registry template for ``chat_format`` ("auto" detects) on ``tokenizer``; ``fmt`` passes a
    ``formats.ChatFormat`` directly (a custom template pair); ``reason`` says why a named format is used (logged)."""
    from .. import formats
    from ..events import choice

    if fmt is None and reason and chat_format not in ("auto", "", None):
        fmt = formats.load(chat_format)
        choice("chat_format", fmt.name, reason, sink)
        installed = formats.install(tokenizer, fmt, sink=sink)
        return _setup(tokenizer, installed, reason, None)
    if fmt is None:
        det = formats.detect(tokenizer, None if chat_format in ("auto", "", None) else chat_format, sink=sink)
        if det.format is None:
            raise ForgeError(f"chat_format: auto: {det.reason}",
                             f"set chat_format in the recipe to one of {', '.join(formats.names())}")
        fmt, reason, variant = det.format, det.reason, det.variant
    else:
        reason, variant = f"custom chat format {fmt.name}", None
    installed = formats.install(tokenizer, fmt, sink=sink)
    return _setup(tokenizer, installed, reason, variant)


def _setup(tokenizer, installed, reason: str, variant: Optional[str]) -> ChatSetup:
    bound = installed.format  # [[BOS]]/[[EOS]] filled in for this tokenizer
    end_tokens = list(bound.end_of_turn) or ([tokenizer.eos_token] if tokenizer.eos_token else [])
    end_ids = [i for i in (token_id(tokenizer, t) for t in end_tokens) if i is not None]
    return ChatSetup(bound.name, tokenizer.chat_template, end_tokens, end_ids, reason,
                     added_tokens=list(installed.added) + list(installed.repurposed),
                     merged_export_only=installed.merged_export_only, stops=list(bound.stop),
                     new_token_ids=list(installed.new_token_ids), default_system=bound.default_system,
                     variant=variant)
