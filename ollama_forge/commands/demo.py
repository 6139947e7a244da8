"""``forge demo``: the whole chain offline on CPU at toy scale; a thin wrapper over ``ollama_forge.demo.run_demo``."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "offline demo of the whole chain on a tiny model (CPU)"
DESCRIPTION = ("Build (once) a small base model from the Python standard library's source, then run recipes/demo.yaml "
               "through every stage: LoRA SFT, DPO, merge, GGUF, Q4_K_M, Modelfile, fidelity gate, push (when Ollama "
               "answers) and base-vs-tuned evaluation on held-out prompts. A second run reuses the cached base and "
               "every stage whose inputs are unchanged.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default=None, help="run directory (default: runs/demo)")
    p.add_argument("--recipe", help="demo recipe (default: recipes/demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.max_steps=50")
    p.add_argument("--base-steps", type=int, metavar="N", help="pretraining steps of the demo base model (default "
                   "400; another value builds and caches another base)")
    p.add_argument("--cache", metavar="DIR", help="base model cache (default: $FORGE_DEMO_CACHE or "
                   "~/.cache/ollama-forge/demo)")
    p.add_argument("--host", help="Ollama host for the push (default: OLLAMA_HOST or 127.0.0.1:11434)")
    p.add_argument("--no-push", action="store_true", help="do not contact Ollama")
    p.add_argument("--no-gate", action="store_true", help="skip the fidelity gate")
    p.add_argument("--rows", type=int, default=10, help="held-out prompts shown side by side (default 10)")
    p.add_argument("--json", action="store_true", help="print events and the result as JSON lines")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..demo import DEFAULT_OUT, run_demo, side_by_side, stage_table
    from ..demo.base import BaseSpec
    from ..recipe import parse_set
    from .train import ProgressPrinter, json_sink

    from .run import quiet_libraries

    quiet_libraries()  # "Loading weights" bars for a 9 MB model and deprecation chatter are noise between stages
    spec = BaseSpec() if args.base_steps is None else dataclasses.replace(BaseSpec(), steps=args.base_steps)
    sink = json_sink if args.json else ProgressPrinter(sys.stderr)
    report = run_demo(args.out or DEFAULT_OUT, sink, recipe_path=args.recipe, base_spec=spec,
                      overrides=parse_set(args.set) or None, host=args.host, push=not args.no_push,
                      gate=not args.no_gate, cache_dir=args.cache)
    if args.json:
        print(json.dumps({"kind": "result", **report.to_json()}, default=str), flush=True)
        return 0
    if isinstance(sink, ProgressPrinter):
        sink.finish()
    print()
    print(stage_table(report))
    print()
    print(side_by_side(report, rows=args.rows))
    print()
    if report.pushed:
        print(f"In Ollama: ollama run {report.pushed}")
    elif report.push_note:
        print(f"Ollama: {report.push_note}")
    print(f"Reports: {report.run_dir / 'eval' / 'eval.md'}"
          + (f", {report.run_dir / 'gate' / 'fidelity.md'}" if report.gate_passed is not None else ""))
    return 0
