"""The end-of-turn pre-flight, run on the tokenized data before the first training step.

A model learns to stop only if the labels hold the end-of-turn token. Templates get this wrong quietly: the token may
sit outside the ``{% generation %}`` span, the template may never write it, or it may not be one token of the
vocabulary. The loss still falls and the tuned model then talks forever, which surfaces only after export. So
training refuses to start, naming the reason and the fix, unless every example's labels hold an end token.

The pad token must differ from the end tokens: collators that mask padding out of the labels by id would otherwise
erase every end-of-turn label too. An existing unused special token is preferred over adding one, since a new token
grows the vocabulary and the adapter then only fits a resized base (merged export only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from ..errors import ForgeError
from ..events import Sink, choice
from .chat import ChatSetup
from .encode import IGNORE, Encoded


@dataclasses.dataclass
class PadChoice:
    token: str
    id: Optional[int]  # None until an added token is given an id by the tokenizer
    reason: str
    added: bool = False


def check_end_of_turn(enc: Encoded, chat: ChatSetup, tokenizer, where: str = "data.train",
                      locations: Optional[Sequence[Any]] = None) -> None:
    """Raise ForgeError unless every example that must end a turn has an end token among its labels."""
    if not enc.examples:
        n = len(enc.dropped)
        raise ForgeError(f"{where}: all {n} records are longer than train.max_length {enc.max_length} "
                         "and were dropped: nothing to train on",
                         "raise train.max_length, or set train.overlong: truncate_prompt")
    end_ids = set(chat.end_ids)
    if enc.kind == "text":
        names = [tokenizer.eos_token] if tokenizer.eos_token else []
        end_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        if not end_ids:
            raise ForgeError(f"{where}: the tokenizer has no EOS token, so documents cannot end and the model "
                             "cannot learn to stop", "use a base model whose tokenizer defines eos_token")
    else:
        names = chat.end_tokens
        if not chat.end_tokens:
            raise ForgeError(f"chat_format {chat.name}: no end-of-turn token is known, so labels cannot teach the "
                             "model to stop", "set chat_format to a registry format (forge formats)")
        if not end_ids:
            raise ForgeError(f"chat_format {chat.name}: end-of-turn {', '.join(map(repr, chat.end_tokens))} is not a "
                             "single token in this tokenizer's vocabulary, so it cannot be learned as one",
                             "pick the chat_format that matches the base model (chat_format: auto detects it)")
    missing = [i for i, (ex, need) in enumerate(zip(enc.examples, enc.needs_end))
               if need and not any(t in end_ids for t in ex["labels"] if t != IGNORE)]
    if not missing:
        return
    first = missing[0]
    ex = enc.examples[first]
    rec = enc.record_index[first]
    loc = str(locations[rec]) if locations is not None and rec < len(locations) else f"record {rec + 1}"
    tok_names = " or ".join(repr(n) for n in names)
    in_text = any(t in end_ids for t in ex["input_ids"])
    count = f"{len(missing)} of {sum(enc.needs_end)} examples"
    if enc.kind == "text":
        why, fix = (f"{tok_names} is missing from the labels", "report this: text documents always get EOS")
    elif in_text:
        why = (f"the template '{chat.name}' writes {tok_names} outside the assistant's loss span "
               "(outside {% generation %})")
        fix = ("use a registry chat_format whose template puts the end-of-turn token inside {% generation %} "
               "(forge formats), or edit the template")
    else:
        why = f"the template '{chat.name}' never writes {tok_names} after an assistant turn"
        fix = "set chat_format to the format the model was made for (forge formats lists them)"
    raise ForgeError(f"{where}: {loc}: labels of {count} never contain the end-of-turn token: {why}, so training "
                     "cannot teach the model to stop", fix)


def _pad_rank(token: str) -> int:
    t = token.lower()
    if "pad" in t:
        return 0
    if "unk" in t:
        return 1
    if "reserved" in t or "unused" in t:
        return 2
    return 3


def choose_pad(tokenizer, chat: ChatSetup, used_ids: set[int], sink: Sink | None = None,
               stage: str = "train") -> PadChoice:
    """Keep a pad token distinct from EOS and end-of-turn, preferring an existing unused special token."""
    forbidden = set(chat.end_ids)
    for t in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if t is not None:
            forbidden.add(t)
    pad, pad_id = tokenizer.pad_token, tokenizer.pad_token_id
    if pad is not None and pad_id is not None and pad_id not in forbidden:
        c = PadChoice(pad, pad_id, "the tokenizer's own pad token, distinct from EOS and end of turn")
        choice("pad_token", pad, c.reason, sink, stage)
        return c
    was = "no pad token" if pad is None else f"pad token {pad!r} is also an end token"
    candidates: list[tuple[int, int, str]] = []
    special = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    for i, tok in special.items():
        text = getattr(tok, "content", str(tok))
        if i in forbidden or i in used_ids:
            continue
        if getattr(tok, "special", True):
            candidates.append((_pad_rank(text), i, text))
    unk = getattr(tokenizer, "unk_token", None)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk_id is not None and unk_id not in forbidden and unk_id not in used_ids:
        candidates.append((1, unk_id, unk))
    if candidates:
        rank, i, text = min(candidates)
        c = PadChoice(text, i, f"{was}: reusing the unused special token {text!r} (the vocabulary stays the same)")
    else:
        c = PadChoice("<|pad|>", None, f"{was} and no unused special token: adding <|pad|> (the vocabulary grows, "
                      "so the adapter only fits the resized base: merged export only)", added=True)
    choice("pad_token", c.token, c.reason, sink, stage)
    return c


def apply_pad(tokenizer, model, pad: PadChoice) -> bool:
    """Set the pad token on tokenizer and model; returns True when the vocabulary grew (embeddings resized)."""
    grew = False
    if pad.added:
        tokenizer.add_special_tokens({"pad_token": pad.token})
        if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
            grew = True
    else:
        tokenizer.pad_token = pad.token
    pad.id = tokenizer.pad_token_id
    if model is not None:
        model.config.pad_token_id = pad.id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad.id
    return grew


def used_token_ids(*encs: Encoded) -> set[int]:
    used: set[int] = set()
    for enc in encs:
        for ex in enc.examples:
            used.update(ex["input_ids"])
    return used
