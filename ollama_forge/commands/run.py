"""``forge run RECIPE.yaml``: the whole chain, cached and resumable, after a pre-flight plan; a thin wrapper over
``ollama_forge.plan.make_plan`` and ``ollama_forge.pipeline.run_pipeline``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .train import ProgressPrinter, _clock, json_sink, sparkline

HELP = "run the whole chain from a recipe, cached and resumable"
DESCRIPTION = ("Pre-flight plan (architecture, chat format, end-of-turn labels, disk, RAM, Ollama name: every problem "
               "at once, before any work), then data -> sft -> dpo -> merge -> convert -> quantize -> modelfile -> "
               "gate -> push -> eval. Stages whose inputs are unchanged are skipped; a killed run, started again, "
               "finishes without redoing finished stages.")

MARK = {"pending": "·", "running": "▶", "ran": "✓", "cached": "=", "skipped": "-", "failed": "✗", "stopped": "‖"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..pipeline import STAGES

    p.add_argument("recipe", help="recipe YAML (docs/recipe.md; examples in recipes/)")
    p.add_argument("-o", "--run-dir", help="run directory (default: the recipe's run_dir, else runs/<recipe name>)")
    p.add_argument("--from", dest="from_stage", choices=STAGES, metavar="STAGE",
                   help=f"redo this stage and every later one ({', '.join(STAGES)})")
    p.add_argument("--until", dest="until_stage", choices=STAGES, metavar="STAGE", help="stop after this stage")
    p.add_argument("--no-push", action="store_true", help="do not contact Ollama (prints the command for later)")
    p.add_argument("--no-gate", action="store_true", help="skip the fidelity gate (then nothing is pushed)")
    p.add_argument("--plan", action="store_true", help="print the pre-flight plan and exit (0 when it passes)")
    p.add_argument("--host", help="Ollama host (default: ollama.host, OLLAMA_HOST or 127.0.0.1:11434)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set export.quant_types=[Q5_K_M]")
    p.add_argument("--json", action="store_true", help="quiet: one JSON event per line, then the result")


class ChainProgress(ProgressPrinter):
    """The chain at a glance on a terminal: a permanent line per finished stage, and one live line with every
    stage's state, the current stage's bar, ETA and (while training) the loss sparkline."""

    def __init__(self, stages: list[str], stream=sys.stderr):
        super().__init__(stream)
        self.state = {s: "pending" for s in stages}
        self.current = ""
        self.t_stage = time.time()

    def strip(self) -> str:
        return " ".join(f"{MARK.get(st, '?')}{name}" for name, st in self.state.items())

    def __call__(self, event) -> None:
        if event.kind == "stage" and event.stage == "pipeline" and "state" in event.data:
            name, st = event.data["name"], event.data["state"]
            self.state[name] = st
            if st == "running":
                self.current, self.t_stage, self.losses = name, time.time(), []
                if self.tty:
                    self.draw(name, {})
                else:
                    self.line(event.message)
                return
            self.line(event.message)
            return
        if event.data.get("retention"):
            return  # printed under the stage table
        super().__call__(event)

    def draw(self, stage: str, d: dict) -> None:
        step, total = d.get("step") or d.get("done") or 0, d.get("total") or 0
        head = self.strip()
        if total:
            frac = step / total
            width = 16
            bar = "█" * int(frac * width) + "░" * (width - int(frac * width))
            tail = f" | {self.current or stage} {bar} {step}/{total} ETA {_clock(d.get('eta_s'))}"
        else:
            tail = f" | {self.current or stage} {_clock(time.time() - self.t_stage)}"
        if self.losses:
            tail += f" loss {self.losses[-1]:.3f} {sparkline(self.losses, 12)}"
        self.stream.write(f"\r\033[K{head}{tail}")
        self.stream.flush()
        self.open_line = True
        self.last_draw = time.time()


def run(args: argparse.Namespace) -> int:
    from ..errors import ForgeError
    from ..pipeline import STAGES, load_recipe, retention_text, run_pipeline
    from ..plan import make_plan
    from ..recipe import parse_set

    rec = load_recipe(args.recipe, parse_set(args.set) or None, run_dir=args.run_dir)
    quiet_libraries()
    plan = make_plan(rec, args.recipe)
    if args.json:
        print(json.dumps({"kind": "plan", **plan.to_json()}, default=str), flush=True)
    else:
        print(plan.text(), file=sys.stderr if not args.plan else sys.stdout, flush=True)
    if args.plan:
        if plan.problems:
            raise ForgeError(f"pre-flight: {len(plan.problems)} problem(s) "
                             f"({', '.join(c.name for c in plan.problems)})", "each is listed above with its fix")
        return 0
    plan.raise_if_refused()
    names = list(STAGES[: STAGES.index(args.until_stage) + 1]) if args.until_stage else list(STAGES)
    sink = json_sink if args.json else ChainProgress(names)
    report = run_pipeline(rec, rec.run_dir, sink, from_stage=args.from_stage, until_stage=args.until_stage,
                          push=not args.no_push, host=args.host, gate=not args.no_gate)
    if args.json:
        print(json.dumps({"kind": "result", **report.to_json()}, default=str), flush=True)
        return 130 if report.stopped else 0
    sink.finish()
    print(summary(report))
    if report.retention:
        print(retention_text(report.retention, sum(r.bytes for r in report.retention if not r.kept)))
    if report.stopped:
        print(f"stopped: {report.stopped}")
        return 130
    return 0


def summary(report) -> str:
    from ..pipeline import human

    rows = [["stage", "status", "time", "disk", "note"]]
    for s in report.stages:
        rows.append([s.name, s.status, f"{s.seconds:.1f}s", human(s.bytes) if s.artifacts else "-",
                     (s.note[:70] + "…") if len(s.note) > 71 else s.note])
    w = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = ["  ".join([r[0].ljust(w[0]), r[1].ljust(w[1]), r[2].rjust(w[2]), r[3].rjust(w[3]), r[4]]).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w) + "  ----")
    lines.append(f"total {report.seconds:.1f}s; run directory {report.run_dir}")
    if report.pushed:
        lines.append(f"In Ollama: ollama run {report.pushed}")
    elif report.push_note:
        lines.append(f"Ollama: {report.push_note}")
    return "\n".join(lines)


def quiet_libraries() -> None:
    """Library progress bars and deprecation chatter would drown the chain's own display."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
