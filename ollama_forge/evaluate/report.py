"""Eval reports: the terminal table, ``eval.json``, ``eval.md`` and ``eval.png`` (metrics per model, loss curves).

Every file is written to a temporary name and renamed when complete. matplotlib is imported inside the plot
function, with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_text
from .runner import METRICS, EvalReport

NAMES = {"exact": "exact", "contains": "contains", "rouge_l": "ROUGE-L", "stop_rate": "stop rate"}


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _ci(d: dict[str, Any]) -> str:
    if d.get("mean") is None:
        return "-"
    return f"{_pct(d['mean'])} [{_pct(d['low'])}, {_pct(d['high'])}]"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    head = ["model", "n", "ppl", "exact", "contains", "ROUGE-L", "stop rate", "tokens", "TTFT s", "tok/s"]
    out = []
    for m in report.models:
        s = m.summary()
        out.append([m.label, str(s["n"]), _num(s["perplexity"], ".2f") if s["perplexity"] is not None else "n/a",
                    _ci(s["exact"]), _ci(s["contains"]), _ci(s["rouge_l"]), _ci(s["stop_rate"]),
                    _num(s["mean_tokens"], ".1f"), _num(s["ttft_s"], ".3f"), _num(s["tokens_per_s"], ".0f")])
    return head, out


def delta_lines(report: EvalReport) -> list[str]:
    lines = []
    for c in report.comparisons:
        mark = " *" if c.significant else ""
        primary = " (primary metric)" if c.metric == report.metric else ""
        lines.append(f"{c.label} vs {c.baseline}: {NAMES[c.metric]} {100 * c.diff:+.1f} points, 95% CI "
                     f"[{100 * c.low:+.1f}, {100 * c.high:+.1f}], n={c.n}{mark}{primary}")
    return lines


def table(report: EvalReport) -> str:
    """The terminal table, the deltas against the baseline (paired bootstrap), and where the prompts came from."""
    head, body = rows(report)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    lines = [f"{report.n} prompts ({report.source or 'given'}); decoding {_decoding(report)}; "
             f"95% bootstrap CIs in brackets"]
    if report.overlap is not None:
        lines.append(f"overlap with training prompts: {report.overlap}")
    lines += [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
    deltas = delta_lines(report)
    if deltas:
        lines += ["", f"paired differences vs {report.models[0].label} (* = CI excludes 0):"] + \
            ["  " + d for d in deltas]
    notes = [f"{m.label}: no perplexity ({m.ppl_note})" for m in report.models if m.perplexity is None and m.ppl_note]
    return "\n".join(lines + (["", *notes] if notes else []))


def _decoding(report: EvalReport) -> str:
    d = report.decoding
    if d.get("temperature") == 0:
        return f"greedy, at most {d.get('num_predict')} new tokens"
    return ", ".join(f"{k}={v}" for k, v in d.items())


def markdown(report: EvalReport, plot: str | None = None, samples: int = 5) -> str:
    head, body = rows(report)
    out = ["# forge eval", "", f"- prompts: {report.n} ({report.source or 'given'})",
           f"- decoding: {_decoding(report)}, the same for every model",
           f"- primary metric (fixed in advance): {NAMES[report.metric]}"]
    if report.overlap is not None:
        out.append(f"- eval prompts also in the training data: {report.overlap}")
    if report.run_dir:
        out.append(f"- run: `{report.run_dir}`")
    out += ["", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    out += ["", "Percentages are means with 95% bootstrap confidence intervals; ppl is the perplexity of the "
            "reference answers (with their end-of-turn token); TTFT and tokens/s are medians."]
    deltas = delta_lines(report)
    if deltas:
        out += ["", f"## Paired differences vs {report.models[0].label}", ""] + [f"- {d}" for d in deltas]
    if plot:
        out += ["", f"![metrics]({plot})"]
    out += ["", "## Sample answers", ""]
    for i, p in enumerate(report.prompts[:samples]):
        out += [f"**{p.id}**: {_md(p.text)}", ""]
        if p.reference is not None:
            out.append(f"- reference: {_md(p.reference)}")
        for m in report.models:
            a = m.answers[i]
            out.append(f"- {m.label}: {_md(a.text)} ({a.tokens} tokens, {a.done_reason})")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md(text: str, limit: int = 300) -> str:
    t = " ".join(text.split())
    t = t if len(t) <= limit else t[:limit] + "…"
    return f"`{t}`" if t else "*(empty)*"


def plot(report: EvalReport, path: str | Path) -> Path:
    """A PNG: one panel of reference-match and stop-rate bars (with CI whiskers) per model, one of perplexity, and
    the training loss curves when the report comes from a run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + (1 if report.loss_curves else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    ax = axes[0]
    keys = list(METRICS) + ["stop_rate"]
    width = 0.8 / max(1, len(report.models))
    for j, m in enumerate(report.models):
        s = m.summary()
        means = [s[k]["mean"] if s[k]["mean"] is not None else 0.0 for k in keys]
        lo = [max(0.0, mean - (s[k]["low"] if s[k]["low"] is not None else mean)) for k, mean in zip(keys, means)]
        hi = [max(0.0, (s[k]["high"] if s[k]["high"] is not None else mean) - mean) for k, mean in zip(keys, means)]
        xs = [i + (j - (len(report.models) - 1) / 2) * width for i in range(len(keys))]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=m.label)
    ax.set_xticks(range(len(keys)), [NAMES[k] for k in keys])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"n={report.n} prompts, 95% CI")
    ax.legend(fontsize=8)
    ax = axes[1]
    ppl = [(m.label, m.perplexity) for m in report.models]
    ax.bar(range(len(ppl)), [p if p is not None else 0 for _, p in ppl])
    for i, (_, p) in enumerate(ppl):
        ax.text(i, p if p is not None else 0, f"{p:.2f}" if p is not None else "n/a", ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(range(len(ppl)), [label for label, _ in ppl], rotation=15, fontsize=8)
    if any(p for _, p in ppl):
        ax.set_yscale("log")
    ax.set_title("perplexity of reference answers")
    if report.loss_curves:
        ax = axes[2]
        for name, pts in sorted(report.loss_curves.items()):
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o" if "eval" in name else None,
                    markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_title("training")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_reports(report: EvalReport, out_dir: str | Path, *, with_plot: bool = True) -> dict[str, Path]:
    """Write eval.json, eval.md and eval.png into ``out_dir``; returns their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if with_plot:
        paths["png"] = plot(report, out / "eval.png")
    paths["json"] = out / "eval.json"
    write_text(paths["json"], json.dumps(report.to_json(), indent=2, ensure_ascii=False, default=str) + "\n")
    paths["md"] = out / "eval.md"
    write_text(paths["md"], markdown(report, "eval.png" if with_plot else None))
    return paths
