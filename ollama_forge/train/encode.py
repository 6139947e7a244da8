"""Canonical records -> token ids and labels, with the loss on what the model should learn.

- ``messages``: rendered with the chat format's template; loss on assistant turns only (the template's
  ``{% generation %}`` markers, or, for a template without them, the tokens each assistant turn adds).
- ``prompt``/``completion``: rendered as a conversation (the prompt as the user turn, the completion as the
  assistant reply), because that is how the served model will see it through the Modelfile's TEMPLATE; loss on the
  completion only.
- ``text`` (continued pretraining): everything is learned; documents end with EOS and longer ones are split into
  ``max_length`` pieces rather than dropped.

Over-length chat examples never lose their final end-of-turn token: by default they are dropped (and counted); with
``overlong: truncate_prompt`` the start of the conversation is cut instead (BOS kept), as long as the final reply
itself fits. We tokenize here rather than letting TRL do it so the end-of-turn pre-flight sees exactly the labels the
trainer will train on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from ..errors import ForgeError
from .chat import ChatSetup

IGNORE = -100


@dataclasses.dataclass
class Encoded:
    kind: str  # chat | completion | text
    examples: list[dict[str, list[int]]]  # {"input_ids", "labels"}
    record_index: list[int]  # the record each example came from
    needs_end: list[bool]  # whether this example's labels must hold an end token (not a mid-document text chunk)
    max_length: int
    dropped: list[int] = dataclasses.field(default_factory=list)  # records dropped as over max_length
    truncated: int = 0  # examples whose prompt side was cut to fit
    split_documents: int = 0  # text documents longer than max_length, split into pieces
    over_length: int = 0  # records over max_length before any handling

    @property
    def tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)

    @property
    def loss_tokens(self) -> int:
        return sum(sum(1 for t in e["labels"] if t != IGNORE) for e in self.examples)

    def summary(self, name: str = "train") -> str:
        parts = [f"{name}: {len(self.examples)} examples, {self.tokens} tokens ({self.loss_tokens} in the loss)"]
        if self.kind == "text":
            if self.split_documents:
                parts.append(f"{self.split_documents} documents over max_length {self.max_length} split into pieces")
        else:
            if self.dropped:
                parts.append(f"{len(self.dropped)} over max_length {self.max_length} dropped")
            if self.truncated:
                parts.append(f"{self.truncated} over max_length {self.max_length} truncated on the prompt side")
            if not self.over_length:
                parts.append(f"none over max_length {self.max_length}")
        return "; ".join(parts)


def record_kind(records: Sequence[dict[str, Any]]) -> str:
    first = records[0]
    if "messages" in first:
        return "chat"
    if "text" in first:
        return "text"
    if "chosen" in first:
        raise ForgeError("data: preference pairs (prompt/chosen/rejected) are DPO data, not SFT data",
                         "put them under dpo.data (or forge train --dpo PAIRS) and give SFT data under data.train")
    return "completion"


def with_system(messages: list[dict[str, str]], system_prompt: Optional[str]) -> list[dict[str, str]]:
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}] + list(messages)
    return list(messages)


def as_conversation(rec: dict[str, Any], system_prompt: Optional[str]) -> tuple[list[dict[str, str]], int]:
    """A chat or prompt/completion record as (messages, index of the first turn the loss may cover)."""
    if "messages" in rec:
        msgs = with_system(rec["messages"], system_prompt)
        return msgs, 0
    prompt, completion = rec["prompt"], rec["completion"]
    p = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    c = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    p = with_system(p, system_prompt)
    return p + c, len(p)


def _ids(out) -> list[int]:
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def _render(tokenizer, template: Optional[str], msgs, **kw) -> list[int]:
    return _ids(tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=True, return_dict=True, **kw))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def render_with_mask(tokenizer, chat: ChatSetup, msgs: list[dict[str, str]], first_turn: int = 0
                     ) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 mask of the assistant tokens (from turn ``first_turn`` on)."""
    template = chat.template
    if template is None:
        raise ForgeError("the tokenizer has no chat template and no chat format was installed",
                         "set chat_format to a registry format (forge formats) for chat data")
    if chat.has_generation_markers:
        out = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        # No markers: an assistant turn's tokens are what rendering it adds after the generation prompt.
        ids = _render(tokenizer, template, msgs)
        mask = [0] * len(ids)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = _render(tokenizer, template, msgs[:i], add_generation_prompt=True) if i else []
            through = _render(tokenizer, template, msgs[: i + 1])
            start = _common_prefix(before, ids)
            end = _common_prefix(through, ids)
            for k in range(start, end):
                mask[k] = 1
    if first_turn:
        prompt = _render(tokenizer, template, msgs[:first_turn], add_generation_prompt=True)
        for k in range(min(_common_prefix(prompt, ids), len(mask))):
            mask[k] = 0
    return ids, mask


def _last_run_start(mask: Sequence[int]) -> int:
    """Index where the final run of 1s in ``mask`` starts (the final reply), or len(mask) when there is none."""
    k = len(mask)
    while k > 0 and not mask[k - 1]:
        k -= 1
    while k > 0 and mask[k - 1]:
        k -= 1
    return k


def encode(records: Sequence[dict[str, Any]], tokenizer, chat: ChatSetup, max_length: int, overlong: str = "drop",
           system_prompt: Optional[str] = None, locations: Optional[Sequence[Any]] = None) -> Encoded:
    if not records:
        raise ForgeError("data: no records to train on", "check data.train (forge data check PATH)")
    kind = record_kind(records)
    enc = Encoded(kind, [], [], [], max_length)
    if kind == "text":
        eos = tokenizer.eos_token_id
        for r, rec in enumerate(records):
            ids = _ids(tokenizer(rec["text"], add_special_tokens=True))
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            if len(ids) > max_length:
                enc.over_length += 1
                enc.split_documents += 1
            for start in range(0, len(ids), max_length):
                piece = ids[start: start + max_length]
                enc.examples.append({"input_ids": piece, "labels": list(piece)})
                enc.record_index.append(r)
                enc.needs_end.append(start + max_length >= len(ids))
        return enc
    bos = tokenizer.bos_token_id
    for r, rec in enumerate(records):
        msgs, first = as_conversation(rec, system_prompt)
        try:
            ids, mask = render_with_mask(tokenizer, chat, msgs, first)
        except ForgeError:
            raise
        except Exception as e:  # jinja2 TemplateError / raise_exception from the template: the data does not fit it
            where = str(locations[r]) if locations is not None and r < len(locations) else f"record {r + 1}"
            raise ForgeError(f"{where}: chat format {chat.name} cannot render it: {' '.join(str(e).split())}",
                             "fix the record, or pick a chat_format that supports it (forge formats)") from None
        if len(ids) > max_length:
            enc.over_length += 1
            keep_bos = bos is not None and ids and ids[0] == bos
            room = max_length - (1 if keep_bos else 0)
            if overlong == "truncate_prompt" and len(ids) - _last_run_start(mask) <= room:
                cut = len(ids) - room
                ids = ([bos] if keep_bos else []) + ids[cut:]
                mask = ([0] if keep_bos else []) + mask[cut:]
                enc.truncated += 1
            else:
                enc.dropped.append(r)
                continue
        labels = [t if m else IGNORE for t, m in zip(ids, mask)]
        enc.examples.append({"input_ids": ids, "labels": labels})
        enc.record_index.append(r)
        enc.needs_end.append(True)
    return enc
