"""Dataset formats (TRL's names), detection with a reason, and per-record validation + normalisation.

Every accepted record is normalised to one canonical shape per format, the shape training consumes:
  messages           {"messages": [{"role", "content"}, ...]}   (OpenAI style; ShareGPT and alpaca map here)
  prompt-completion  {"prompt": str | messages, "completion": str | messages}
  text               {"text": str}
  preference         {"prompt": str | messages (may be absent: implicit prompt), "chosen": ..., "rejected": ...}
Conversations are normalised the way Ollama shapes them for its TEMPLATE (consecutive same-role turns merged with
a blank line; system turns gathered to the front), so training sees exactly what serving will render.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..formats import normalize_conversation  # one implementation of Ollama's message shaping

FORMATS = ("messages", "prompt-completion", "alpaca", "text", "preference")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
# Keys that identify each format, in the order detection tries them (preference first: it may also have `prompt`).
SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("preference", ("chosen", "rejected")),
    ("messages", ("messages",)),
    ("messages", ("conversations",)),
    ("prompt-completion", ("prompt", "completion")),
    ("alpaca", ("instruction", "output")),
    ("text", ("text",)),
)


class Invalid(Exception):
    """One problem with one record: ``field`` names where (``messages[2].role``), the message what to do."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def detect(records: list[Any]) -> tuple[str | None, str]:
    """Pick the format most records match; returns (format, reason) or (None, why not)."""
    counts: dict[str, int] = {}
    keys_seen: dict[str, str] = {}
    dicts = [r for r in records if isinstance(r, dict)]
    for r in dicts:
        for fmt, sig in SIGNATURES:
            if all(k in r for k in sig):
                counts[fmt] = counts.get(fmt, 0) + 1
                keys_seen.setdefault(fmt, "+".join(repr(k) for k in sig))
                break
    if not counts:
        sample = sorted({k for r in dicts[:20] for k in r})[:8]
        return None, f"no record has the fields of a known format (saw {', '.join(map(repr, sample)) or 'no objects'})"
    fmt = max(counts, key=lambda f: counts[f])
    n = len(records)
    how = "every record has" if counts[fmt] == n else f"{counts[fmt]} of {n} records have"
    extra = ""
    if fmt == "messages" and keys_seen[fmt] == "'conversations'":
        extra = " (ShareGPT from/value)"
    if fmt == "preference":
        conv = any(isinstance(r.get("chosen"), list) for r in dicts if "chosen" in r)
        extra = " (conversational)" if conv else " (plain text)"
    return fmt, f"{how} {keys_seen[fmt]}{extra}"


def _text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        # OpenAI content parts: keep the text parts, in order.
        if any(p.get("type") not in ("text", None) for p in value):
            raise Invalid(field, "only text content parts are supported (found images or other parts)")
        value = "".join(str(p.get("text", "")) for p in value)
    if value is None:
        raise Invalid(field, "missing (null)")
    if not isinstance(value, str):
        raise Invalid(field, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise Invalid(field, "empty")
    return value


def _conversation(value: Any, field: str, *, need_assistant_last: bool = True, sharegpt: bool = False
                  ) -> tuple[list[dict[str, str]], list[str]]:
    """Validate and normalise a list of turns; returns (messages, notes about what normalisation changed)."""
    if not isinstance(value, list):
        raise Invalid(field, f"must be a list of messages, got {type(value).__name__}")
    if not value:
        raise Invalid(field, "no messages")
    msgs: list[dict[str, str]] = []
    for i, m in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise Invalid(f, f"must be an object with role and content, got {type(m).__name__}")
        if sharegpt or ("from" in m and "role" not in m):
            role_raw, content = m.get("from"), m.get("value")
            rf, cf = f + ".from", f + ".value"
            role = SHAREGPT_ROLES.get(str(role_raw).lower()) if isinstance(role_raw, str) else None
        else:
            role_raw, content = m.get("role"), m.get("content")
            rf, cf = f + ".role", f + ".content"
            role = role_raw.lower() if isinstance(role_raw, str) and role_raw.lower() in ROLES else None
        if role_raw is None:
            raise Invalid(rf, "missing")
        if role is None:
            raise Invalid(rf, f"unknown role {role_raw!r} (use system, user or assistant)")
        if "content" not in m and "value" not in m:
            raise Invalid(cf, "missing")
        msgs.append({"role": role, "content": _text(content, cf)})
    notes = []
    first_other = next((i for i, m in enumerate(msgs) if m["role"] != "system"), None)
    if first_other is None:
        raise Invalid(field, "only system messages; add a user turn and an assistant reply")
    if any(m["role"] == "system" for m in msgs[first_other:]):
        i = next(i for i, m in enumerate(msgs) if i > first_other and m["role"] == "system")
        raise Invalid(f"{field}[{i}].role", "system message after the conversation started; move it to the start "
                      "(Ollama gathers all system messages into one, so mid-conversation ones cannot be served as trained)")
    if msgs[first_other]["role"] != "user":
        raise Invalid(f"{field}[{first_other}].role", "first turn after the system prompt must be user, got assistant")
    norm = normalize_conversation(msgs)
    if len(norm) != len(msgs):
        notes.append("merged consecutive same-role turns (as Ollama does)")
    if need_assistant_last:
        if not any(m["role"] == "assistant" for m in norm):
            raise Invalid(field, "no assistant turn: nothing to learn; add the assistant reply")
        if norm[-1]["role"] != "assistant":
            raise Invalid(f"{field}[{len(msgs) - 1}].role",
                          "conversation ends with a user turn: nothing to learn after it; add the assistant reply or drop it")
    return norm, notes


def _str_or_conv(value: Any, field: str, *, assistant_last: bool) -> str | list[dict[str, str]]:
    if isinstance(value, list):
        return _conversation(value, field, need_assistant_last=assistant_last)[0] if assistant_last else \
            _prompt_conversation(value, field)
    return _text(value, field)


def _prompt_conversation(value: list, field: str) -> list[dict[str, str]]:
    msgs, _ = _conversation(value, field, need_assistant_last=False)
    if msgs[-1]["role"] != "user":
        raise Invalid(f"{field}[{len(value) - 1}].role", "a prompt must end with a user turn")
    return msgs


def _completion_conversation(value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise Invalid(field, "must be a non-empty list of assistant messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") != "assistant":
            raise Invalid(f"{field}[{i}].role", "completion messages must have role assistant")
        out.append({"role": "assistant", "content": _text(m.get("content"), f"{field}[{i}].content")})
    return out


def normalize(record: Any, fmt: str) -> tuple[dict[str, Any], list[str]]:
    """Validate one record against ``fmt``; return its canonical form and notes. Raises ``Invalid``."""
    if not isinstance(record, dict):
        raise Invalid("record", f"must be a JSON object, got {type(record).__name__}")
    if fmt == "messages":
        if "messages" in record:
            msgs, notes = _conversation(record["messages"], "messages")
        elif "conversations" in record:
            msgs, notes = _conversation(record["conversations"], "conversations", sharegpt=True)
        else:
            raise Invalid("messages", "missing (format is messages: expected 'messages' or 'conversations')")
        return {"messages": msgs}, notes
    if fmt == "prompt-completion":
        for k in ("prompt", "completion"):
            if k not in record:
                raise Invalid(k, "missing")
        prompt = record["prompt"]
        if isinstance(prompt, list):
            return {"prompt": _prompt_conversation(prompt, "prompt"),
                    "completion": _completion_conversation(record["completion"], "completion")}, []
        return {"prompt": _text(prompt, "prompt"), "completion": _text(record["completion"], "completion")}, []
    if fmt == "alpaca":
        for k in ("instruction", "output"):
            if k not in record:
                raise Invalid(k, "missing")
        instruction = _text(record["instruction"], "instruction")
        extra = record.get("input")
        extra = "" if extra is None else _text(extra, "input", allow_empty=True)
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        msgs = ([{"role": "system", "content": _text(record["system"], "system")}] if record.get("system") else [])
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], "output")}]
        return {"messages": msgs}, []
    if fmt == "text":
        if "text" not in record:
            raise Invalid("text", "missing")
        return {"text": _text(record["text"], "text")}, []
    if fmt == "preference":
        for k in ("chosen", "rejected"):
            if k not in record:
                raise Invalid(k, "missing")
        out: dict[str, Any] = {}
        conv = isinstance(record["chosen"], list)
        if "prompt" in record and record["prompt"] is not None:
            out["prompt"] = _str_or_conv(record["prompt"], "prompt", assistant_last=False) if conv or \
                isinstance(record["prompt"], list) else _text(record["prompt"], "prompt")
            if conv:
                out["chosen"] = _completion_conversation(record["chosen"], "chosen")
                out["rejected"] = _completion_conversation(record["rejected"], "rejected")
            else:
                out["chosen"] = _text(record["chosen"], "chosen")
                out["rejected"] = _text(record["rejected"], "rejected")
        elif conv:  # implicit prompt: chosen and rejected are whole conversations sharing a prefix
            out["chosen"] = _conversation(record["chosen"], "chosen")[0]
            out["rejected"] = _conversation(record["rejected"], "rejected")[0]
        else:
            raise Invalid("prompt", "missing (plain-text preference pairs need a prompt)")
        if out["chosen"] == out["rejected"]:
            raise Invalid("rejected", "identical to chosen: the pair teaches nothing; fix or drop it")
        return out, []
    raise Invalid("format", f"unknown format {fmt!r} (use {', '.join(FORMATS)})")


def canonical_format(fmt: str) -> str:
    """The shape records take after normalisation (alpaca records become conversations)."""
    return "messages" if fmt == "alpaca" else fmt
