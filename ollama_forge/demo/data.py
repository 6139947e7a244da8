"""The demo's task data: "is this code or prose?" on snippets of the Python standard library, generated
deterministically from ``corpus.py`` and shipped in ``recipes/demo/`` (so ``recipes/demo.yaml`` runs as is, on the
demo model or on a real one).

Why this task: a model pretrained for a minute on raw stdlib source has seen plenty of code and docstring prose but
was never asked anything, so it answers a question with more source text (exact match ~0); after a minute of LoRA
SFT on 400 labelled snippets it answers "code" or "prose" and stops. Held-out snippets come from modules that no
stage ever saw (not the pretraining corpus, not SFT, not DPO), and any held-out snippet that also occurs verbatim in
the pretraining text is dropped, so a correct answer is generalisation, not recall. Exact match against the one-word
label is the metric, fixed before any result was seen (``eval.metric: exact`` in the recipe).

Files (``write(out_dir)``; ``python -m ollama_forge.demo.data recipes/demo`` regenerates them):

- ``train.jsonl``   SFT: ``{"messages": [user, assistant]}``, balanced code/prose, training modules only
- ``dpo.jsonl``     DPO: ``{"prompt", "chosen", "rejected"}`` (chosen = the right label), other training snippets
- ``heldout.jsonl`` eval: ``{"prompt", "reference"}``, held-out modules only
- ``splits.json``   which modules are on which side, counts, the Python version and a hash of the three files
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

from . import corpus as C

SEED = "ollama-forge demo data v1"
LABELS = ("code", "prose")
# Four phrasings, each used on both sides: the tuned model must follow the instruction, not one fixed string.
PHRASINGS = (
    "Is this code or prose? Answer with one word.\n\n{snippet}",
    "Code or prose?\n\n{snippet}",
    "{snippet}\n\nIs the text above code or prose?",
    "Classify the following text as code or prose.\n\n{snippet}",
)
FILES = ("train.jsonl", "dpo.jsonl", "heldout.jsonl")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Examples per file, half of each label. 400 SFT examples: 100 steps at batch 8 (about two epochs) take the
    demo base to 95-98% held-out accuracy (measured on two base builds); 120 DPO pairs for 30 steps at batch 4;
    200 held-out prompts give a 95% CI of about +-7 points on an accuracy near 50% and +-3 near 95%."""

    sft: int = 400
    dpo: int = 120
    heldout: int = 200


@dataclasses.dataclass
class DemoData:
    train: list[dict[str, Any]]
    dpo: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    splits: dict[str, Any]


def _prompt(snippet: str, rng: random.Random) -> str:
    return rng.choice(PHRASINGS).format(snippet=snippet)


def _round_robin(pools: dict[str, list[str]], n: int, rng: random.Random, used: set[str]) -> list[tuple[str, str]]:
    """Up to n (module, snippet) picks, one per module per round (modules in a seeded order), never reusing a text:
    many modules contribute a few snippets each rather than a few big modules most of them."""
    order = sorted(pools)
    rng.shuffle(order)
    picks: list[tuple[str, str]] = []
    depth = 0
    while len(picks) < n and any(len(pools[m]) > depth for m in order):
        for m in order:
            if len(picks) >= n:
                break
            if len(pools[m]) > depth and pools[m][depth] not in used:
                used.add(pools[m][depth])
                picks.append((m, pools[m][depth]))
        depth += 1
    return picks


def generate(sizes: Sizes = Sizes(), mods: list[C.Module] | None = None) -> DemoData:
    """The demo data, a pure function of the standard library's files and ``sizes``."""
    mods = C.modules() if mods is None else mods
    pools: dict[tuple[bool, str], dict[str, list[str]]] = {(h, k): {} for h in (False, True) for k in LABELS}
    for m, kind, snippets in C.iter_snippets(mods):
        rng = random.Random(f"{SEED}:{m.name}:{kind}")
        unique = list(dict.fromkeys(snippets))
        rng.shuffle(unique)
        pools[(m.held_out, kind)][m.name] = unique
    pretraining = "\n".join(C.pretraining_documents(mods))
    for kind in LABELS:  # a held-out snippet that also occurs verbatim in the pretraining text would be recall
        for name, snippets in pools[(True, kind)].items():
            pools[(True, kind)][name] = [s for s in snippets if s not in pretraining]

    used: set[str] = set()
    train, dpo, heldout = [], [], []
    picked: dict[str, list[tuple[str, str, str]]] = {"train": [], "dpo": [], "heldout": []}
    for kind in LABELS:
        rng = random.Random(f"{SEED}:train:{kind}")
        both = _round_robin(pools[(False, kind)], sizes.sft // 2 + sizes.dpo // 2, rng, used)
        picked["train"] += [(m, s, kind) for m, s in both[:sizes.sft // 2]]
        picked["dpo"] += [(m, s, kind) for m, s in both[sizes.sft // 2:]]
        rng = random.Random(f"{SEED}:heldout:{kind}")
        picked["heldout"] += [(m, s, kind) for m, s in _round_robin(pools[(True, kind)], sizes.heldout // 2, rng,
                                                                    used)]
    for split, rows in picked.items():
        rng = random.Random(f"{SEED}:order:{split}")
        rng.shuffle(rows)
        for _m, snippet, label in rows:
            prompt = _prompt(snippet, rng)
            if split == "train":
                train.append({"messages": [{"role": "user", "content": prompt},
                                           {"role": "assistant", "content": label}]})
            elif split == "dpo":
                wrong = LABELS[1 - LABELS.index(label)]
                dpo.append({"prompt": prompt, "chosen": label, "rejected": wrong})
            else:
                heldout.append({"prompt": prompt, "reference": label})
    splits = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "held_out_every": C.HELD_OUT_EVERY,
        "train_modules": sorted(m.name for m in mods if not m.held_out),
        "heldout_modules": sorted(m.name for m in mods if m.held_out),
        "counts": {k: dict(_count(v)) for k, v in (("train", train), ("dpo", dpo), ("heldout", heldout))},
        "modules_used": {k: sorted({m for m, _s, _l in v}) for k, v in picked.items()},
    }
    return DemoData(train, dpo, heldout, splits)


def _label(rec: dict[str, Any]) -> str:
    return rec["messages"][-1]["content"] if "messages" in rec else rec.get("chosen") or rec["reference"]


def _count(rows: list[dict[str, Any]]) -> dict[str, int]:
    out = {k: 0 for k in LABELS}
    for r in rows:
        out[_label(r)] += 1
    return out


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def render(data: DemoData) -> dict[str, str]:
    """File name -> exact text (the content hash in splits.json covers the three data files)."""
    files = {"train.jsonl": _jsonl(data.train), "dpo.jsonl": _jsonl(data.dpo), "heldout.jsonl": _jsonl(data.heldout)}
    h = hashlib.sha256("".join(files[f] for f in FILES).encode("utf-8")).hexdigest()
    files["splits.json"] = json.dumps({**data.splits, "sha256": h}, indent=1, sort_keys=True) + "\n"
    return files


def write(out_dir: str | Path, data: DemoData | None = None) -> dict[str, Path]:
    from ..atomic import write_text

    out = Path(out_dir)
    paths = {}
    for name, text in render(data or generate()).items():
        write_text(out / name, text)
        paths[name] = out / name
    return paths


def snippet_of(prompt: str) -> str:
    """The snippet inside a prompt written by ``_prompt`` (for the disjointness checks)."""
    for p in PHRASINGS:
        head, tail = p.split("{snippet}")
        if prompt.startswith(head) and prompt.endswith(tail):
            return prompt[len(head):len(prompt) - len(tail)]
    raise ValueError(f"not a demo prompt: {prompt[:60]!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "recipes/demo")
    for name, path in write(out).items():
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
