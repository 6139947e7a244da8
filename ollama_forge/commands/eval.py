"""``forge eval RUN_DIR | --models A B ... [--prompts FILE]`` and ``forge eval --fidelity RUN_DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate models on held-out prompts; fidelity gate over every export hop"
DESCRIPTION = (
    "Evaluate models on held-out prompts with the same template and greedy decoding for each: perplexity of the "
    "reference answers (HF directories and GGUF files, scored in-process; not for Ollama names), reference match "
    "(exact, contains, ROUGE-L) with 95% bootstrap intervals, stop rate, mean length, time to first token and "
    "tokens/s. RUN_DIR compares the run's base model with the tuned one (adapter, and the exported GGUF) on the "
    "recipe's held-out prompts; --models takes any mix of HF directories, adapter directories, GGUF files and "
    "Ollama names (the first is the baseline). Writes eval.json, eval.md and eval.png. --fidelity RUN_DIR runs "
    "the fidelity gate instead: the same prompts through the adapter, the merged model, the F16 and the quantized "
    "GGUF, comparing next-token distributions hop by hop (exit status 1 when a hop fails).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (base vs tuned on its eval split)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="models to compare (HF dir, adapter dir, GGUF, "
                   "Ollama name, run dir); the first is the baseline; with RUN_DIR, added after base and tuned")
    p.add_argument("--prompts", metavar="FILE", help="JSONL prompts (prompt/reference, messages, alpaca) or text, "
                   "one per line (default with RUN_DIR: the recipe's held-out data)")
    p.add_argument("--fidelity", action="store_true", help="run the fidelity gate over RUN_DIR's export chain")
    p.add_argument("--limit", type=int, metavar="N", help="at most N prompts (default: recipe eval.limit, 50; "
                   "gate.prompts, 16, for --fidelity)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="generation limit per answer (default 128; 64 for "
                   "--fidelity)")
    p.add_argument("--metric", choices=("exact", "contains", "rouge_l"), help="primary metric (default: recipe "
                   "eval.metric, rouge_l)")
    p.add_argument("--chat-format", metavar="NAME", help="chat format for every model (default: detected per "
                   "model; the training format with RUN_DIR)")
    p.add_argument("--system", help="system prompt for every model")
    p.add_argument("--no-gguf", action="store_true", help="with RUN_DIR: leave the exported GGUF out")
    p.add_argument("--out", metavar="DIR", help="where reports go (default: RUN_DIR/eval, else ./forge-eval)")
    p.add_argument("--no-plot", action="store_true", help="skip eval.png")
    p.add_argument("--host", help="Ollama address (default: OLLAMA_HOST, else 127.0.0.1:11434)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    from ..errors import ForgeError

    if args.fidelity:
        return _fidelity(args)
    if not args.run_dir and not args.models:
        raise ForgeError("nothing to evaluate", "give a RUN_DIR, or --models A B ... with --prompts FILE")
    from ..evaluate import eval_run, load_prompts, run_eval, table, write_reports

    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            raise ForgeError(f"{run_dir}: not a directory", "pass a run directory, or --models ... --prompts FILE")
        report = eval_run(run_dir, extra_models=args.models or (), prompts_file=args.prompts, limit=args.limit,
                          max_new_tokens=args.max_new_tokens, metric=args.metric, include_gguf=not args.no_gguf,
                          chat_format=args.chat_format, system=args.system, host=args.host, sink=_sink(args))
        out = Path(args.out) if args.out else run_dir / "eval"
    else:
        if not args.prompts:
            raise ForgeError("--models needs --prompts FILE", "a JSONL file of prompts (with references to score)")
        prompts = load_prompts(args.prompts, args.limit)
        report = run_eval(args.models, prompts, max_new_tokens=args.max_new_tokens or 128,
                          metric=args.metric or "rouge_l", chat_format=args.chat_format, system=args.system,
                          host=args.host, source=args.prompts, sink=_sink(args))
        out = Path(args.out) if args.out else Path("forge-eval")
    paths = write_reports(report, out, with_plot=not args.no_plot)
    if args.json:
        print(json.dumps(report.to_json() | {"files": {k: str(v) for k, v in paths.items()}}, ensure_ascii=False,
                         default=str))
    else:
        print(table(report))
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    from ..errors import ForgeError
    from ..evaluate.fidelity import DEFAULT_MAX_NEW_TOKENS, gate_for_run, write_gate_report
    from ..evaluate.prompts import load_prompts

    if not args.run_dir or args.models:
        raise ForgeError("--fidelity takes one RUN_DIR (not --models)", "forge eval --fidelity runs/my-run")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ForgeError(f"{run_dir}: not a directory", "pass the run directory of forge run")
    prompts = load_prompts(args.prompts, args.limit) if args.prompts else None
    report = gate_for_run(run_dir, prompts=prompts, limit=args.limit,
                          max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, sink=_sink(args))
    paths = write_gate_report(report, Path(args.out) if args.out else run_dir)
    if args.json:
        print(json.dumps(report.to_json() | {"files": {k: str(v) for k, v in paths.items()}}, default=str))
    else:
        print(report.table())
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if report.passed else 1


def _sink(args: argparse.Namespace):
    """Progress lines on stderr (the table or JSON goes to stdout)."""
    if args.json:
        return None

    def sink(event) -> None:
        if event.kind == "stage":
            print(event.message, file=sys.stderr, flush=True)

    return sink
