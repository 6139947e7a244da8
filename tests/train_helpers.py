"""Small data sets and helpers for the training tests and bench/train.py (no heavy imports at module level)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]

# Four taught replies, each asked for in ten phrasings. Held-out phrasings share the replies, so eval loss measures
# whether the replies were learned (a random-init model cannot generalise to replies it never saw).
REPLIES = {
    "greet": "Hello! I am the forge assistant.",
    "weather": "It is sunny and warm today.",
    "capital": "Paris is the capital of France.",
    "math": "Two plus two is four.",
}
# Every phrasing of a class ends with its keyword: a 2-layer random-init model learns the prompt -> reply mapping far
# sooner when the cue sits at a fixed distance from the reply (measured: 32/32 vs 28/32 training prompts at 300 steps).
PHRASINGS = {
    "greet": ["Hello", "Say hello", "Well, hello", "Please say hello", "Hi and hello", "Greetings and hello",
              "Just say hello", "Friend, hello", "Once more, hello", "Assistant, hello"],
    "weather": ["How is the weather", "Tell me the weather", "Report the weather", "Describe the weather",
                "What about the weather", "Check the weather", "Today, the weather", "Explain the weather",
                "Any news on the weather", "Give me the weather"],
    "capital": ["What is the capital", "Name the capital", "Which city is the capital", "Tell me the capital",
                "France and its capital", "The French capital", "Where is the capital", "Give me the capital",
                "Which is the capital", "Say the capital"],
    "math": ["What is two plus two", "Compute two plus two", "Tell me two plus two", "Solve two plus two",
             "Add two plus two", "Quick, two plus two", "Please do two plus two", "How much is two plus two",
             "Calculate two plus two", "What makes two plus two"],
}


def chat_records(per_class: int = 10) -> list[dict[str, Any]]:
    out = []
    for k, qs in PHRASINGS.items():
        for q in qs[:per_class]:
            out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": REPLIES[k]}]})
    return out


def split_records(records: list, every: int = 5) -> tuple[list, list]:
    """Deterministic held-out split: every ``every``-th record of each reply class goes to eval."""
    train, held = [], []
    for i, r in enumerate(records):
        (held if i % every == every - 1 else train).append(r)
    return train, held


def preference_records(per_class: int = 10) -> list[dict[str, Any]]:
    """Conversational pairs: the taught reply is chosen, another class's reply rejected."""
    keys = list(REPLIES)
    out = []
    for ki, k in enumerate(keys):
        for qi, q in enumerate(PHRASINGS[k][:per_class]):
            wrong = keys[(ki + 1 + qi % 3) % len(keys)]
            out.append({"prompt": [{"role": "user", "content": q}],
                        "chosen": [{"role": "assistant", "content": REPLIES[k]}],
                        "rejected": [{"role": "assistant", "content": REPLIES[wrong]}]})
    return out


def skewed_records(n: int = 64, short_words: int = 6, long_words: int = 120) -> list[dict[str, Any]]:
    """Half short, half long replies: where padding costs most (for the padding-free benchmark)."""
    words = ("the quick brown fox jumps over the lazy dog while seven wizards quietly judge boxing matches "
             "and a cat naps").split()
    out = []
    for i in range(n):
        m = short_words if i % 2 == 0 else long_words
        text = " ".join(words[(i + j) % len(words)] for j in range(m))
        out.append({"messages": [{"role": "user", "content": f"Question number {i}?"},
                                 {"role": "assistant", "content": text}]})
    return out


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: these tiny models gain little from two, and when other processes share the 2 cores
    two OpenMP threads spin-wait on each other (measured: 500 SFT steps took 27 s on one thread, 120-570 s on two
    under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_recipe(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def forge(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ollama_forge", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=timeout, cwd=REPO)


def greedy_reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 24) -> tuple[str, list[int]]:
    """Greedy continuation after the generation prompt: (decoded text without special tokens, new token ids)."""
    import torch

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new
