"""Held-out prompts for evaluation: a prompts file, or a run's own eval split, with optional reference answers.

A prompts file is JSONL (one object per line) or plain text (one prompt per line, no references). Each JSON line
is one of:

- ``{"prompt": "...", "reference": "..."}`` (``reference`` optional; ``completion``, ``answer``, ``response`` and
  ``output`` are read as the reference too; ``prompt`` may be a list of messages ending with a user turn);
- ``{"messages": [...]}``: the conversation up to the last user turn is the prompt, a final assistant message
  the reference;
- ``{"instruction": ..., "input": ..., "output": ...}`` (alpaca).

From a run directory, the prompts are the recipe's held-out data exactly as training held it out: ``data.eval``
when given, else the same seeded ``data.eval_split`` of ``data.train`` the trainer used; ``eval.prompts`` in the
recipe overrides both. The prompts are checked against the training prompts: any overlap is reported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import ForgeError

REFERENCE_KEYS = ("reference", "completion", "answer", "response", "output")


@dataclasses.dataclass
class EvalPrompt:
    id: str  # where it came from: "file.jsonl:12" or "eval split #3"
    messages: list[dict[str, str]]  # the conversation to answer (ends with a user turn)
    reference: str | None = None  # the expected answer, when known

    def key(self) -> str:
        """Identity of the prompt (not the reference) for overlap checks: normalised message texts."""
        blob = json.dumps([[m["role"], " ".join(m["content"].split())] for m in self.messages], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def _msgs(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise ForgeError(f"{where}: empty prompt", "give the prompt text")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        out = []
        for i, m in enumerate(value):
            role, content = m.get("role"), m.get("content")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise ForgeError(f"{where}: message {i}: needs role system/user/assistant and text content",
                                 'write {"role": "user", "content": "..."}')
            out.append({"role": role, "content": content})
        return out
    raise ForgeError(f"{where}: prompt must be text or a list of messages", 'write {"prompt": "...", '
                     '"reference": "..."}')


def from_record(rec: dict[str, Any], where: str) -> EvalPrompt:
    """An EvalPrompt from one JSON object (the shapes in the module docstring, or a canonical training record)."""
    if not isinstance(rec, dict):
        raise ForgeError(f"{where}: expected a JSON object", 'write {"prompt": "...", "reference": "..."}')
    ref = next((rec[k] for k in REFERENCE_KEYS if isinstance(rec.get(k), str)), None)
    if "messages" in rec or "conversations" in rec:
        msgs = _msgs(rec.get("messages") or rec.get("conversations"), where)
        if msgs[-1]["role"] == "assistant":
            ref = msgs[-1]["content"]
            msgs = msgs[:-1]
    elif "instruction" in rec:
        user = str(rec["instruction"]) + (f"\n\n{rec['input']}" if str(rec.get("input") or "").strip() else "")
        msgs = ([{"role": "system", "content": str(rec["system"])}] if rec.get("system") else []) + \
            [{"role": "user", "content": user}]
    elif "prompt" in rec:
        msgs = _msgs(rec["prompt"], where)
        comp = rec.get("completion")
        if isinstance(comp, list) and comp and isinstance(comp[-1], dict):
            ref = str(comp[-1].get("content", ""))
    elif "text" in rec:
        raise ForgeError(f"{where}: a plain-text record has no prompt to answer",
                         "evaluate with prompt/reference or messages records")
    else:
        raise ForgeError(f"{where}: no prompt (expected prompt, messages or instruction)",
                         'write {"prompt": "...", "reference": "..."}')
    if not msgs or msgs[-1]["role"] != "user":
        raise ForgeError(f"{where}: the prompt must end with a user turn", "drop trailing assistant turns")
    return EvalPrompt(where, msgs, ref)


def load_prompts(path: str | Path, limit: int | None = None) -> list[EvalPrompt]:
    """Prompts from a JSONL or text file (see the module docstring); ``limit`` keeps the first N."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ForgeError(f"{p}: prompts file not found", "check the path") from None
    except UnicodeDecodeError:
        raise ForgeError(f"{p}: not UTF-8 text", "save the prompts as UTF-8") from None
    out: list[EvalPrompt] = []
    jsonl = p.suffix in (".jsonl", ".json") or text.lstrip().startswith("{")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        if jsonl:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ForgeError(f"{where}: invalid JSON: {e.msg}", "one JSON object per line") from None
            out.append(from_record(rec, where))
        else:
            out.append(EvalPrompt(where, [{"role": "user", "content": line}]))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ForgeError(f"{p}: no prompts", "one prompt per line (JSONL with prompt/reference, or text)")
    return out


def from_canonical(records: Iterable[dict[str, Any]], label: str) -> list[EvalPrompt]:
    """EvalPrompts from the data loader's canonical records (messages / prompt-completion); text records skipped."""
    out = []
    for i, rec in enumerate(records):
        if "text" in rec and "messages" not in rec and "prompt" not in rec:
            continue
        if "prompt" in rec and isinstance(rec.get("completion"), str):
            rec = {"prompt": rec["prompt"], "reference": rec["completion"]}
        out.append(from_record(rec, f"{label} #{i}"))
    return out


@dataclasses.dataclass
class RunPrompts:
    prompts: list[EvalPrompt]
    source: str  # what they are, for the report ("data.eval: eval.jsonl", "eval split 0.1 of data.train (seed 42)")
    overlap: int  # eval prompts that also appear among the training prompts
    train_count: int


def run_prompts(run_dir: str | Path, limit: int | None = None, prompts_file: str | None = None) -> RunPrompts:
    """The run's held-out prompts (see the module docstring) and their overlap with the training prompts."""
    from .. import recipe as recipes
    from ..train.common import load_records, split_eval

    run = Path(run_dir)
    rpath = run / "recipe.resolved.yaml"
    if not rpath.is_file():
        raise ForgeError(f"{run}: no recipe.resolved.yaml (not a run directory?)",
                         "pass a run directory written by forge train / forge run, or --models ... --prompts FILE")
    import yaml

    data = yaml.safe_load(rpath.read_text(encoding="utf-8")) or {}
    r = recipes.from_dict(data, str(rpath))
    limit = limit if limit is not None else r.eval.limit
    d = r.data
    train = load_records(d.train, d.format, "data.train", True, d.split, d.subset)
    records, locs = train.records, train.locations
    if prompts_file or r.eval.prompts:
        chosen = prompts_file or r.eval.prompts
        prompts = load_prompts(chosen, None)
        source = f"prompts file {chosen}"
        train_records = records
    elif d.eval:
        ev = load_records(d.eval, d.format, "data.eval", True, d.split, d.subset)
        prompts = from_canonical(ev.records, "data.eval")
        source = f"data.eval: {', '.join(d.eval)}"
        train_records = records
    else:
        train_records, _, held, _ = split_eval(records, locs, d.eval_split, r.train.seed)
        if not held:
            raise ForgeError(f"{rpath}: data.eval_split is {d.eval_split}: this run held out no prompts",
                             "pass --prompts FILE with held-out prompts")
        prompts = from_canonical(held, "eval split")
        source = f"eval split {d.eval_split} of data.train (seed {r.train.seed}), as training held it out"
    if limit:
        prompts = prompts[:limit]
    seen = {p.key() for p in from_canonical(train_records, "train")}
    overlap = sum(1 for p in prompts if p.key() in seen)
    return RunPrompts(prompts, source, overlap, len(train_records))

