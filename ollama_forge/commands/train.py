"""``forge train RECIPE.yaml``: SFT with LoRA/QLoRA, then the recipe's optional DPO round. A thin wrapper over
``ollama_forge.train.sft.train_sft`` and ``ollama_forge.train.dpo.train_dpo``.

Every recipe key can be set from the command line with ``--set KEY=VALUE`` (``--set train.rank=8``); the common ones
have their own flags. Runs unchanged under ``accelerate launch`` / ``torchrun`` (rank 0 alone writes artifacts and
prints progress).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HELP = "fine-tune with LoRA or QLoRA (SFT, then optional DPO)"
DESCRIPTION = ("Fine-tune a base model with LoRA or QLoRA (SFT), then optionally DPO from the SFT adapter. "
               "Checkpoints are atomic; --resume continues from the newest complete one.")

# flag -> (recipe key, type, help)
DIRECT: dict[str, tuple[str, Any, str]] = {
    "--model": ("base_model", str, "base model: HF directory or Hub id"),
    "--chat-format": ("chat_format", str, "chat format (auto, or a name from forge formats)"),
    "--system": ("system_prompt", str, "system prompt for training (and, by default, Ollama)"),
    "--method": ("train.method", str, "lora or qlora"),
    "--rank": ("train.rank", int, "LoRA rank"),
    "--alpha": ("train.alpha", int, "LoRA alpha"),
    "--lr": ("train.learning_rate", float, "peak learning rate"),
    "--epochs": ("train.epochs", float, "passes over the data"),
    "--max-steps": ("train.max_steps", int, "stop after N optimizer steps"),
    "--batch-size": ("train.batch_size", int, "examples per device per step"),
    "--grad-accum": ("train.grad_accum", int, "gradient accumulation steps"),
    "--max-length": ("train.max_length", int, "max tokens per example"),
    "--save-steps": ("train.save_steps", int, "checkpoint every N steps"),
    "--seed": ("train.seed", int, "seed"),
    "--device": ("train.device", str, "auto, cuda, mps or cpu"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe YAML (optional when --model and --data are given)")
    p.add_argument("--data", action="append", metavar="PATH", help="training data (repeatable); replaces data.train")
    p.add_argument("--eval-data", action="append", metavar="PATH", help="held-out data (repeatable)")
    p.add_argument("--dpo", action="append", metavar="PAIRS", help="preference pairs: run DPO after SFT, with the "
                   "SFT model as reference (repeatable); sets dpo.data")
    for flag, (key, tp, h) in DIRECT.items():
        p.add_argument(flag, type=tp, metavar=key.split(".")[-1].upper(), help=f"{h} ({key})")
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None, help="pack examples into rows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set any recipe key, e.g. "
                   "--set train.dropout=0.1 (see docs/recipe.md)")
    p.add_argument("--run-dir", help="run directory (default: recipe run_dir, else runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--force", action="store_true", help="retrain even if the run's adapter is current; discard "
                   "earlier checkpoints")
    p.add_argument("--json", action="store_true", help="print events and the result as JSON lines")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    from ..recipe import parse_set

    out: dict[str, Any] = {}
    for flag, (key, _, _) in DIRECT.items():
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        if v is not None:
            out[key] = v
    if args.data:
        out["data.train"] = list(args.data)
    if args.eval_data:
        out["data.eval"] = list(args.eval_data)
    if args.dpo:
        out["dpo.data"] = list(args.dpo)
    if args.packing is not None:
        out["train.packing"] = args.packing
    out.update(parse_set(args.set))
    return out


def load_recipe(args: argparse.Namespace):
    from .. import recipe as R
    from ..errors import ForgeError

    overrides = overrides_from(args)
    if args.recipe:
        rec = R.load(args.recipe, overrides)
        name = Path(args.recipe).stem
    else:
        if "base_model" not in overrides or "data.train" not in overrides:
            raise ForgeError("forge train: no recipe given", "pass RECIPE.yaml, or --model and --data")
        rec = R.apply_overrides(R.Recipe(), overrides)
        name = Path(str(overrides["base_model"]).rstrip("/")).name or "run"
    run_dir = args.run_dir or rec.run_dir or str(Path("runs") / name)
    return rec, run_dir


def run(args: argparse.Namespace) -> int:
    from ..train import train_dpo, train_sft
    from ..train.callbacks import is_main_process

    rec, run_dir = load_recipe(args)
    main = is_main_process()
    if not getattr(args, "debug", False):  # library progress bars and deprecation chatter would drown ours
        import warnings

        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    if not main:  # rank 0 alone talks; the others would repeat every line
        import logging

        logging.getLogger("ollama_forge").setLevel(logging.WARNING)
    if args.json:
        sink = json_sink if main else None
    else:
        sink = ProgressPrinter(sys.stderr) if main else None
    results = [train_sft(rec, run_dir, sink=sink, resume=args.resume, force=args.force)]
    if rec.dpo is not None:
        results.append(train_dpo(rec, run_dir, sink=sink, resume=args.resume, force=args.force))
    if not main:
        return 0
    if args.json:
        print(json.dumps({"kind": "result", "run_dir": str(run_dir),
                          "results": [r.to_json() for r in results]}, default=str), flush=True)
    else:
        if isinstance(sink, ProgressPrinter):
            sink.finish()
        for r in results:
            print(summary_line(r))
        print(f"adapter: {Path(run_dir) / 'adapter'}")
    return 0


def summary_line(r) -> str:
    def f(x):
        return "-" if x is None else f"{x:.4g}"

    if r.skipped:
        return f"{r.stage}: current, skipped (adapter {r.adapter}; --force retrains)"
    parts = [f"{r.stage}: {r.steps} steps in {r.seconds:.0f}s on {r.device} ({r.method}, {r.dtype})",
             f"loss {f(r.first_loss)} -> {f(r.last_loss)}"]
    if r.first_eval_loss is not None:
        parts.append(f"eval loss {f(r.first_eval_loss)} -> {f(r.last_eval_loss)}")
    if r.tokens_per_s:
        parts.append(f"{r.tokens_per_s:.0f} tokens/s")
    if r.dropped:
        parts.append(f"{r.dropped} over-length dropped")
    if r.truncated:
        parts.append(f"{r.truncated} truncated on the prompt side")
    if r.resumed_from is not None:
        parts.append(f"resumed from step {r.resumed_from}")
    return "; ".join(parts)


def json_sink(event) -> None:
    print(event.to_json(), flush=True)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    vals = values[-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in vals)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressPrinter:
    """Progress bar with ETA and a loss sparkline on a terminal; plain metric lines otherwise."""

    def __init__(self, stream=sys.stderr, width: int = 28):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.width = width
        self.losses: list[float] = []
        self.last_draw = 0.0
        self.open_line = False

    def __call__(self, event) -> None:
        kind, data = event.kind, event.data
        if kind == "choice" or data.get("level") == "warning":
            return  # the CLI's logger prints choices and warnings already
        if kind == "progress":
            if self.tty and (time.time() - self.last_draw > 0.2 or data.get("step") == data.get("total")):
                self.draw(event.stage, data)
            return
        if kind == "metric" and "loss" in data and data["loss"] is not None:
            self.losses.append(float(data["loss"]))
        if kind == "metric" and self.tty:
            if "eval_loss" in data:
                self.line(f"{event.stage} step {data.get('step')}: eval loss {data['eval_loss']:.4g}")
            return
        self.line(f"{event.stage}: {event.message}" if event.stage and not event.message.startswith(event.stage)
                  else event.message)

    def line(self, text: str) -> None:
        if self.open_line:
            self.stream.write("\r\033[K")
            self.open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def draw(self, stage: str, d: dict) -> None:
        step, total = d.get("step") or 0, d.get("total") or 0
        frac = step / total if total else 0
        filled = int(frac * self.width)
        bar = "█" * filled + "░" * (self.width - filled)
        loss = f" loss {self.losses[-1]:.3f} {sparkline(self.losses)}" if self.losses else ""
        self.stream.write(f"\r\033[K{stage} {bar} {step}/{total} ETA {_clock(d.get('eta_s'))}{loss}")
        self.stream.flush()
        self.open_line = True
        self.last_draw = time.time()

    def finish(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False

