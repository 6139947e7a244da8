"""Batch evaluation: every model answers the same held-out prompts with the same decoding, then per-model metrics.

Per model: perplexity of the reference answers (HF and GGUF, scored in-process), reference match (exact, contains,
ROUGE-L), stop rate (the answer ended at an end-of-turn token or stop string before the token limit), mean length,
time to first token and tokens/s. Every model after the baseline (the first) gets paired differences with
bootstrap confidence intervals over the same prompts. Decoding is greedy by default (temperature 0), so answers are
reproducible and the only thing that differs between two models is the model.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ForgeError
from ..events import Sink, emit
from . import metrics as M
from .models import ModelSpec, model_spec, open_model
from .prompts import EvalPrompt

STAGE = "eval"
METRICS = ("exact", "contains", "rouge_l")
# 128 new tokens: the recipe's eval.max_new_tokens default; enough for a short answer and its end-of-turn token.
DEFAULT_MAX_NEW_TOKENS = 128


@dataclasses.dataclass
class Answer:
    prompt_id: str
    text: str
    tokens: int
    done_reason: str
    ttft_s: float
    tokens_per_s: float
    exact: float | None = None
    contains: float | None = None
    rouge_l: float | None = None
    nll: float | None = None  # mean NLL per reference token (None: no reference, or not scorable)
    ref_tokens: int = 0

    @property
    def stopped(self) -> bool:
        return self.done_reason == "stop"


@dataclasses.dataclass
class ModelResult:
    label: str
    ref: str
    kind: str
    backend: str
    answers: list[Answer]
    perplexity: float | None
    ppl_note: str = ""  # why there is no perplexity
    seconds: float = 0.0

    def values(self, metric: str) -> list[float]:
        if metric == "stop_rate":
            return [1.0 if a.stopped else 0.0 for a in self.answers]
        return [getattr(a, metric) for a in self.answers if getattr(a, metric) is not None]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(self.answers), "perplexity": self.perplexity}
        for m in METRICS + ("stop_rate",):
            vals = self.values(m)
            mean, lo, hi = M.mean_ci(vals) if vals else (None, None, None)
            out[m] = {"mean": mean, "low": lo, "high": hi, "n": len(vals)}
        toks = [a.tokens for a in self.answers]
        out["mean_tokens"] = statistics.fmean(toks) if toks else None
        out["mean_chars"] = statistics.fmean(len(a.text) for a in self.answers) if self.answers else None
        ttft = [a.ttft_s for a in self.answers]
        out["ttft_s"] = statistics.median(ttft) if ttft else None
        tps = [a.tokens_per_s for a in self.answers if a.tokens_per_s > 0]
        out["tokens_per_s"] = statistics.median(tps) if tps else None
        return out


@dataclasses.dataclass
class Comparison:
    label: str
    baseline: str
    metric: str
    diff: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclasses.dataclass
class EvalReport:
    prompts: list[EvalPrompt]
    models: list[ModelResult]
    comparisons: list[Comparison]
    metric: str  # the primary metric, fixed before looking at results
    decoding: dict[str, Any]
    source: str = ""  # where the prompts came from
    overlap: int | None = None  # prompts also found in the training data (run directories)
    run_dir: str | None = None
    loss_curves: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    created: str = dataclasses.field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def n(self) -> int:
        return len(self.prompts)

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created, "run_dir": self.run_dir, "source": self.source, "n": self.n,
            "overlap_with_training": self.overlap, "metric": self.metric, "decoding": self.decoding,
            "prompts": [{"id": p.id, "messages": p.messages, "reference": p.reference} for p in self.prompts],
            "models": [{"label": m.label, "ref": m.ref, "kind": m.kind, "backend": m.backend,
                        "summary": m.summary(), "perplexity_note": m.ppl_note, "seconds": round(m.seconds, 2),
                        "answers": [dataclasses.asdict(a) for a in m.answers]} for m in self.models],
            "comparisons": [dataclasses.asdict(c) | {"significant": c.significant} for c in self.comparisons],
            "loss_curves": {k: [list(x) for x in v] for k, v in self.loss_curves.items()},
        }


def greedy(max_new_tokens: int) -> dict[str, Any]:
    """Request options for reproducible answers on every backend (Ollama's names)."""
    return {"temperature": 0.0, "seed": 0, "num_predict": int(max_new_tokens)}


def evaluate_model(spec: ModelSpec, prompts: Sequence[EvalPrompt], options: dict[str, Any], *,
                   host: str | None = None, score: bool = True, sink: Sink | None = None) -> ModelResult:
    t0 = time.perf_counter()
    emit(sink, "stage", STAGE, f"eval: {spec.label}: {len(prompts)} prompts")
    opened = open_model(spec, host=host, score=score, sink=sink)
    answers: list[Answer] = []
    nlls: list[list[float]] = []
    try:
        for i, p in enumerate(prompts):
            stream = opened.backend.chat(p.messages, options=dict(options))
            text = stream.text()
            st = stream.stats
            a = Answer(p.id, text, st.tokens if st else 0, st.done_reason if st else "incomplete",
                       st.ttft_s if st else 0.0, st.tokens_per_s if st else 0.0)
            if p.reference is not None:
                a.exact, a.contains, a.rouge_l = (M.exact(text, p.reference), M.contains(text, p.reference),
                                                  M.rouge_l(text, p.reference))
                if opened.scorer is not None:
                    x = _reference_nll(opened, p)
                    nlls.append(x)
                    a.nll, a.ref_tokens = (sum(x) / len(x) if x else None), len(x)
            answers.append(a)
            emit(sink, "progress", STAGE, spec.label, done=i + 1, total=len(prompts))
    finally:
        opened.close()
    from .scoring import perplexity

    ppl = perplexity(nlls) if nlls else None
    note = "" if ppl is not None else (opened.why_no_ppl or "no reference answers")
    return ModelResult(spec.label, spec.ref, spec.kind, opened.backend.name, answers, ppl, note,
                       time.perf_counter() - t0)


def _reference_nll(opened: Any, p: EvalPrompt) -> list[float]:
    from .scoring import completion_nll, join

    sc = opened.scorer
    prompt = opened.backend.prompt(p.messages)
    completion = p.reference + (opened.eot_text or "")
    seq = join(sc.encode_prompt, sc.encode_prompt, sc.encode_text, prompt, completion)
    return completion_nll(sc.logits(seq.ids), seq)


def run_eval(models: Sequence[ModelSpec | str], prompts: Sequence[EvalPrompt], *,
             max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, metric: str = "rouge_l", options: dict | None = None,
             chat_format: str | None = None, system: str | None = None, host: str | None = None,
             score: bool = True, source: str = "", overlap: int | None = None, run_dir: str | None = None,
             sink: Sink | None = None) -> EvalReport:
    """Evaluate ``models`` (specs or references) on ``prompts``; the first model is the baseline for comparisons.

    ``chat_format`` / ``system`` apply to every model that has none set (same template for all); ``options``
    replace the greedy decoding.
    """
    if metric not in METRICS:
        raise ForgeError(f"--metric {metric}: unknown", f"use one of {', '.join(METRICS)}")
    if not prompts:
        raise ForgeError("no prompts to evaluate", "pass --prompts FILE, or a run directory with held-out data")
    if not models:
        raise ForgeError("no models to evaluate", "pass --models A B ..., or a run directory")
    specs = [m if isinstance(m, ModelSpec) else model_spec(m, host=host) for m in models]
    for s in specs:
        if s.chat_format is None:
            s.chat_format = chat_format
        if s.system is None:
            s.system = system
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        for i, s in enumerate(specs):
            s.label = f"{i + 1}:{s.label}"
    opts = dict(options) if options is not None else greedy(max_new_tokens)
    results = [evaluate_model(s, prompts, opts, host=host, score=score, sink=sink) for s in specs]
    comparisons = []
    base = results[0]
    for r in results[1:]:
        for m in METRICS + ("stop_rate",):
            a, b = base.values(m), r.values(m)
            if a and len(a) == len(b):
                d, lo, hi = M.paired_diff_ci(b, a)
                comparisons.append(Comparison(r.label, base.label, m, d, lo, hi, len(a)))
    return EvalReport(list(prompts), results, comparisons, metric, opts, source, overlap, run_dir)


def run_specs(run_dir: str | Path, *, include_gguf: bool = True) -> tuple[list[ModelSpec], str | None, str | None]:
    """(models, chat format, system prompt) for evaluating a run: its base, the tuned adapter, and the run's final
    GGUF (what Ollama serves) when it exists; all with the chat format and system prompt training used."""
    import yaml

    from ..backends.transformers import adapter_format, adapter_meta
    from ..runs import RunDir

    run = RunDir(run_dir)
    if not run.adapter.is_dir():
        raise ForgeError(f"{run.root}: no adapter/ (the run has not trained yet)", "train first: forge train RECIPE")
    data = (yaml.safe_load(run.recipe.read_text(encoding="utf-8")) or {}) if run.recipe.is_file() else {}
    meta = adapter_meta(run.adapter)
    base = str(meta.get("base_model") or data.get("base_model") or "")
    if not base:
        raise ForgeError(f"{run.root}: cannot tell the base model", "the recipe's base_model is empty")
    fmt = adapter_format(run.adapter) or (data.get("chat_format") if data.get("chat_format") != "auto" else None)
    system = meta.get("system_prompt") if "system_prompt" in meta else data.get("system_prompt")
    qlora = meta.get("method") == "qlora"
    specs = [ModelSpec(base, "hf", base, label="base"),
             ModelSpec(str(run.adapter), "adapter", base, adapter=str(run.adapter), label="tuned (adapter)",
                       load_4bit=qlora)]
    if include_gguf:
        ggufs = sorted(run.root.glob("model-*.gguf"), key=lambda p: (not p.name.startswith("model-q"), p.name))
        if ggufs:
            g = ggufs[0]
            specs.append(ModelSpec(str(g), "gguf", str(g), label=f"tuned ({g.stem.split('-', 1)[1].upper()} GGUF)"))
    return specs, fmt, system


def loss_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Training and eval loss per step from the run's metrics.jsonl, per stage ("sft loss", "sft eval_loss", ...)."""
    import json

    path = Path(run_dir) / "metrics.jsonl"
    out: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        stage = row.get("stage", "train")
        for key in ("loss", "eval_loss"):
            if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), int):
                out.setdefault(f"{stage} {key}", []).append((row["step"], float(row[key])))
    return out


def eval_run(run_dir: str | Path, *, extra_models: Sequence[str] = (), prompts_file: str | None = None,
             limit: int | None = None, max_new_tokens: int | None = None, metric: str | None = None,
             include_gguf: bool = True, chat_format: str | None = None, system: str | None = None,
             host: str | None = None, sink: Sink | None = None) -> EvalReport:
    """Evaluate a run directory: base vs tuned (adapter, and the exported GGUF) on the run's held-out prompts, all
    with the chat format and system prompt training used (``chat_format`` / ``system`` replace them)."""
    import yaml

    from .prompts import run_prompts

    run = Path(run_dir)
    rp = run_prompts(run, limit, prompts_file)
    if rp.overlap:
        emit(sink, "log", STAGE, f"{rp.overlap} of {len(rp.prompts)} eval prompts also appear in the training "
                                 "data: their scores do not measure generalisation", level="warning")
    specs, fmt, trained_system = run_specs(run, include_gguf=include_gguf)
    fmt = chat_format or fmt
    system = system if system is not None else trained_system
    specs += [model_spec(m, host=host) for m in extra_models]
    cfg = ((yaml.safe_load((run / "recipe.resolved.yaml").read_text(encoding="utf-8")) or {}).get("eval") or {})
    report = run_eval(specs, rp.prompts, max_new_tokens=max_new_tokens or cfg.get("max_new_tokens")
                      or DEFAULT_MAX_NEW_TOKENS, metric=metric or cfg.get("metric") or "rouge_l",
                      chat_format=fmt, system=system, host=host, source=rp.source, overlap=rp.overlap,
                      run_dir=str(run), sink=sink)
    report.loss_curves = loss_curves(run)
    return report
