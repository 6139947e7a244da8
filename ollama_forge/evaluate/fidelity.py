"""The fidelity gate: does what Ollama will serve still behave like what was trained, hop by hop?

The chain is adapter-on (PEFT, unmerged) -> merged HF model -> F16 GGUF -> quantized GGUF. The same prompts go
through every model twice:

1. **Next-token distributions, teacher-forced.** Each prompt plus a continuation (its reference answer, else the
   adapter model's own greedy answer, with the end-of-turn token) is tokenized once, by the training tokenizer,
   and every model scores those same ids: transformers for HF models, llama.cpp with logits for every position
   for GGUFs. At each position that predicts a continuation token (what drives generation), consecutive models
   are compared: top-1 agreement and KL divergence. A hop whose top-1 agreement falls under its threshold fails.
2. **Generation through each model's real prompt path**, greedy: the HF models with the training chat format; the
   GGUFs as Ollama would run them from the Modelfile (its TEMPLATE, SYSTEM, stop PARAMETERs, on top of llama.cpp's
   own end-of-generation tokens). The stop rate (answers that end before the token limit without running past an
   end-of-turn text) may not fall more than ``max_stop_rate_drop`` below the adapter model's.

Plus a static check of the Modelfile: its TEMPLATE must be the chat format's, and each of the format's stop
strings must be in its stop list unless llama.cpp already ends generation on that text by itself (a single
end-of-generation token in the GGUF's vocabulary: ``<|im_end|>``, ``<|eot_id|>``, EOS...). ``### User:`` of the
plain format is not one: without it a plain-format model that runs on into a new turn is never cut.

A failing hop is named with its likely cause: ``merge`` (adapter -> merged: wrong scale, merged into quantized
weights, another base), ``conversion`` (merged -> F16: tensor layout such as the Q/K permutation, norms, rope, the
vocabulary), ``quantization`` (F16 -> quantized), ``template`` (the Modelfile's TEMPLATE or stops).

QLoRA: the adapter was trained on 4-bit NF4 weights and merged into the full-precision base, so the model as
trained and the merged model differ by the quantization error: that hop is held to a measured bound
(``qlora_adapter_merged_top1``), and the merge itself is checked exactly against the adapter on the
full-precision base.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ForgeError
from ..events import Sink, choice, emit
from .prompts import EvalPrompt

STAGE = "gate"
CAUSES = {
    "merge": "the merged weights do not reproduce the adapter (wrong scale alpha/r, merged into quantized weights, "
             "or another base model)",
    "conversion": "the GGUF computes differently from the HF model (tensor layout such as the Q/K permutation, "
                  "norms, rope settings, or the vocabulary)",
    "quantization": "the quantized GGUF drifts from F16 more than the bound (try a larger type: Q5_K_M, Q6_K, "
                    "Q8_0)",
    "template": "the Modelfile prompts or stops the model differently from training (TEMPLATE or stop strings)",
}
# Generation limit per answer in the gate: answers of the tiny fixtures are a few tokens; 64 leaves room to see
# an answer run on past its end-of-turn text.
DEFAULT_MAX_NEW_TOKENS = 64
# Positions compared per prompt at most: bounds memory (positions x vocabulary floats per model) on real models.
MAX_POSITIONS = 64


@dataclasses.dataclass
class Node:
    """One model of the chain."""

    key: str  # "adapter" | "adapter-4bit" | "merged" | "f16" | "quant"
    label: str
    kind: str  # "hf" | "gguf"
    path: str
    adapter: str | None = None
    load_4bit: bool = False
    logits: list[Any] = dataclasses.field(default_factory=list)  # per prompt: (positions, vocab) at answer positions
    answers: list[str] = dataclasses.field(default_factory=list)
    stops: list[bool] = dataclasses.field(default_factory=list)
    tokenizer_mismatch: list[str] = dataclasses.field(default_factory=list)  # prompt ids llama.cpp tokenized apart
    runs_on: list[str] = dataclasses.field(default_factory=list)  # prompt ids whose answer ran past a stop text
    note: str = ""

    @property
    def stop_rate(self) -> float | None:
        return statistics.fmean(self.stops) if self.stops else None


@dataclasses.dataclass
class HopResult:
    name: str  # "adapter -> merged"
    src: str
    dst: str
    cause: str  # what a failure of this hop most likely is (a CAUSES key)
    min_top1: float | None = None
    max_kl: float | None = None  # bound on kl_mean, for hops that must be exact (adapter -> merged)
    top1: float | None = None
    positions: int = 0
    kl_mean: float | None = None
    kl_max: float | None = None
    stop_rate: float | None = None  # of dst, through its real prompt path
    reference_stop_rate: float | None = None  # the adapter model's
    passed: bool = True
    problems: list[str] = dataclasses.field(default_factory=list)
    likely_cause: str | None = None  # "conversion: ..." when failed
    skipped: str | None = None

    def fail(self, problem: str, cause: str) -> None:
        self.passed = False
        self.problems.append(problem)
        if self.likely_cause is None:
            self.likely_cause = f"{cause}: {CAUSES[cause]}"


@dataclasses.dataclass
class GateReport:
    hops: list[HopResult]
    n_prompts: int
    thresholds: dict[str, float]
    models: dict[str, str]
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    answers: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(h.passed for h in self.hops if h.skipped is None)

    @property
    def failing(self) -> list[HopResult]:
        return [h for h in self.hops if not h.passed]

    def hop(self, name: str) -> HopResult:
        for h in self.hops:
            if h.name == name:
                return h
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "n_prompts": self.n_prompts, "thresholds": self.thresholds,
                "models": self.models, "seconds": round(self.seconds, 2), "notes": self.notes,
                "hops": [dataclasses.asdict(h) for h in self.hops], "answers": self.answers}

    def table(self) -> str:
        head = ["hop", "top-1", "min", "KL mean", "KL max", "stop rate", "result"]
        body = []
        for h in self.hops:
            if h.skipped:
                body.append([h.name, "-", "-", "-", "-", "-", f"skipped: {h.skipped}"])
                continue
            body.append([h.name, _pct(h.top1, 1), _pct(h.min_top1, 0), _f(h.kl_mean), _f(h.kl_max),
                         "-" if h.stop_rate is None else f"{_pct(h.stop_rate, 0)} (adapter "
                         f"{_pct(h.reference_stop_rate, 0)})", "pass" if h.passed else "FAIL"])
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]

        def line(r: list[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

        out = [f"fidelity gate: {self.n_prompts} prompts, top-1 over {self._positions()} continuation positions",
               line(head), line(["-" * w for w in widths])] + [line(r) for r in body]
        for h in self.failing:
            out.append(f"{h.name}: " + "; ".join(h.problems) + f" -> likely cause: {h.likely_cause}")
        out += self.notes
        out.append("gate " + ("PASSED" if self.passed else "FAILED"))
        return "\n".join(out)

    def _positions(self) -> int:
        return max((h.positions for h in self.hops), default=0)

    def markdown(self) -> str:
        return "# forge fidelity gate\n\n```\n" + self.table() + "\n```\n"


def _pct(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


# ---------------------------------------------------------------------------------------------------------------
# Scoring and generation per node
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Plan:
    """The token ids every node scores, from the training tokenizer."""

    prompt_texts: list[str]
    prompt_ids: list[list[int]]
    seqs: list[Any]  # scoring.TokenSeq per prompt


def _positions(seq: Any) -> slice:
    start = seq.n_prompt - 1
    return slice(start, min(len(seq.ids) - 1, start + MAX_POSITIONS))


def _hf_node(node: Node, prompts: Sequence[EvalPrompt], plan: _Plan | None, *, chat_format: str | None,
             system: str | None, options: dict[str, Any], stop_texts: Sequence[str],
             sink: Sink | None) -> _Plan:
    """Generate and score with an HF node; the first node also fixes the token ids (returns the plan)."""
    from ..backends.transformers import TransformersBackend
    from .scoring import join

    b = TransformersBackend(node.path, adapter=node.adapter, chat_format=chat_format, system=system,
                            load_4bit=node.load_4bit, sink=sink)
    try:
        _generate(node, b, prompts, options, stop_texts)
        if plan is None:
            texts = [b.prompt(p.messages) for p in prompts]
            eot = b.bound.end_of_turn[0] if b.bound.end_of_turn else (b.eos_text or "")
            seqs = []
            for p, text, ans, stopped in zip(prompts, texts, node.answers, node.stops):
                cont = p.reference if p.reference is not None else ans
                seqs.append(join(b.encode_prompt, b.encode_prompt, b.encode_text, text,
                                 cont + (eot if (p.reference is not None or stopped) else "")))
            plan = _Plan(texts, [b.encode_prompt(t) for t in texts], seqs)
        for seq in plan.seqs:
            node.logits.append(b.logits(seq.ids).numpy()[_positions(seq)])
    finally:
        b.close()
    return plan


def _gguf_node(node: Node, prompts: Sequence[EvalPrompt], plan: _Plan, *, modelfile: Any, chat_format: str | None,
               system: str | None, options: dict[str, Any], stop_texts: Sequence[str], sink: Sink | None) -> None:
    from .scoring import GGUFScorer

    longest = max(len(s.ids) for s in plan.seqs)
    sc = GGUFScorer(node.path, n_ctx=max(512, longest + 8))
    try:
        for p, text, ids, seq in zip(prompts, plan.prompt_texts, plan.prompt_ids, plan.seqs):
            if sc.encode_prompt(text) != ids:
                node.tokenizer_mismatch.append(p.id)
            node.logits.append(sc.logits(seq.ids)[_positions(seq)])
    finally:
        sc.close()
    b = serving_backend(node.path, modelfile, chat_format, system=system, sink=sink)
    try:
        _generate(node, b, prompts, options, stop_texts)
    finally:
        b.close()


def _generate(node: Node, backend: Any, prompts: Sequence[EvalPrompt], options: dict[str, Any],
              stop_texts: Sequence[str]) -> None:
    for p in prompts:
        stream = backend.chat(p.messages, options=dict(options))
        text = stream.text()
        ran_on = [s for s in stop_texts if s and s in text]
        if ran_on:
            node.runs_on.append(p.id)
        node.answers.append(text)
        node.stops.append(bool(stream.stats and stream.stats.done_reason == "stop" and not ran_on))


def serving_backend(gguf: str | Path, modelfile: Any, chat_format: str | None, *, system: str | None = None,
                    sink: Sink | None = None) -> Any:
    """The in-process backend set up as Ollama runs ``gguf`` from ``modelfile`` (a ``modelfile.Modelfile``): its
    TEMPLATE (through the registry format it matches), SYSTEM, PARAMETERs and only its stop strings. Without a
    Modelfile: ``chat_format``'s template and stops, and ``system``."""
    from .. import formats
    from ..backends.llamacpp import LlamaCppBackend
    from .scoring import tune_threads

    fmt_name = chat_format
    if modelfile is not None and modelfile.template is not None:
        fmt = formats.from_ollama_template(modelfile.template)
        if fmt is not None:
            fmt_name = fmt.name
    b = LlamaCppBackend(str(gguf), chat_format=fmt_name, sink=sink)  # repacking decided by the backend
    tune_threads(b.llm)
    if modelfile is not None:
        params = dict(modelfile.parameters)
        b.stops = [s for s in params.pop("stop", []) if s]
        b.system = modelfile.system
        b.defaults.update(params)
    elif system is not None:
        b.system = system
    return b


# ---------------------------------------------------------------------------------------------------------------
# The Modelfile check
# ---------------------------------------------------------------------------------------------------------------

def _from_path(value: str, base: Path) -> Path | None:
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    return p if p.is_file() else None


def check_modelfile(modelfile: Any, gguf: str | Path, chat_format: str) -> list[str]:
    """Problems with the Modelfile as a way to serve ``gguf`` in ``chat_format`` (empty when it is right)."""
    from .. import formats
    from ..backends.llamacpp import _metadata
    from .scoring import load_llama

    problems = []
    meta = _metadata(Path(gguf))
    eos_id = meta.get("tokenizer.ggml.eos_token_id")
    llm = load_llama(gguf, n_ctx=64)
    try:
        import llama_cpp

        from ..backends.llamacpp import _piece

        eos_text = _piece(llm, int(eos_id)).decode("utf-8", "replace") if eos_id is not None else None
        want = formats.load(chat_format).bind(add_bos=False, eos_token=eos_text)
        got = formats.from_ollama_template(modelfile.template) if modelfile.template is not None else None
        if modelfile.template is None:
            problems.append("the Modelfile has no TEMPLATE (Ollama would use the GGUF's own chat template)")
        elif got is None or got.name != want.name or got.ollama_template != want.ollama_template:
            problems.append(f"the Modelfile's TEMPLATE is not the {chat_format} template the model was trained with"
                            + (f" (it is {got.name}'s)" if got is not None else ""))
        have = set(modelfile.parameters.get("stop", []))
        vocab = llm._model.vocab  # noqa: SLF001 - the vocab handle llama_vocab_is_eog needs
        for stop in want.stop:
            if stop in have:
                continue
            ids = llm.tokenize(stop.encode("utf-8"), add_bos=False, special=True)
            if len(ids) == 1 and llama_cpp.llama_vocab_is_eog(vocab, ids[0]):
                continue  # llama.cpp (and so Ollama) ends generation on this token by itself
            problems.append(f"stop string {stop!r} of the {chat_format} format is missing from the Modelfile, and "
                            "llama.cpp does not end generation on it by itself")
    finally:
        llm.close()
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------------------------

def run_gate(prompts: Sequence[EvalPrompt], *, adapter: str | Path, base: str | Path,
             merged: str | Path | None = None, f16: str | Path | None = None, quant: str | Path | None = None,
             modelfile: str | Path | None = None, chat_format: str | None = None, system: str | None = None,
             qlora: bool = False, config: Any = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             cache: dict | None = None, sink: Sink | None = None) -> GateReport:
    """Run the gate over the chain given explicitly; a missing model skips the hops that need it (reported).

    ``config`` is a ``recipe.GateConfig`` (thresholds); ``chat_format`` defaults to the one the adapter was trained
    with; ``system`` to the training system prompt. ``cache`` (a dict kept by the caller) reuses each model's
    scores and answers across gates that share models, e.g. one adapter checked against several exports: a
    model is recomputed only when its files (path, size, modification time) or the settings changed.
    """
    from .. import recipe as recipes
    from ..backends.transformers import adapter_format, adapter_meta
    from ..modelfile import read as read_modelfile
    from .runner import greedy

    t0 = time.perf_counter()
    cfg = config or recipes.GateConfig()
    if not prompts:
        raise ForgeError("the fidelity gate got no prompts", "pass --prompts FILE or a run with held-out data")
    meta = adapter_meta(adapter)
    fmt = chat_format or adapter_format(adapter)
    if fmt is None:
        raise ForgeError(f"{adapter}: the chat format the adapter was trained with is unknown",
                         "pass --chat-format NAME")
    if system is None and "system_prompt" in meta:
        system = meta["system_prompt"]
    mf = read_modelfile(modelfile) if modelfile is not None else None
    options = greedy(max_new_tokens)
    from .. import formats

    stop_texts = [s for s in formats.load(fmt).stop if "[[" not in s]
    nodes: dict[str, Node] = {}
    if qlora:
        nodes["adapter-4bit"] = Node("adapter-4bit", "adapter (4-bit, as trained)", "hf", str(base),
                                     adapter=str(adapter), load_4bit=True)
    nodes["adapter"] = Node("adapter", "adapter" + (" (full-precision base)" if qlora else ""), "hf", str(base),
                            adapter=str(adapter))
    if merged is not None:
        nodes["merged"] = Node("merged", "merged", "hf", str(merged))
    if f16 is not None:
        nodes["f16"] = Node("f16", Path(f16).stem.replace("model-", "").upper(), "gguf", str(f16))
    if quant is not None:
        nodes["quant"] = Node("quant", Path(quant).stem.replace("model-", "").upper(), "gguf", str(quant))

    # The first HF node is the model as trained (4-bit for QLoRA): its tokenizer fixes the ids every node scores,
    # and its answers are the continuation of prompts without a reference.
    ref_key = "adapter-4bit" if qlora else "adapter"
    plan = None
    setting = {"format": fmt, "system": system, "options": options,
               "prompts": [[p.messages, p.reference] for p in prompts]}
    for key in [k for k in ("adapter-4bit", "adapter", "merged") if k in nodes]:
        ck = _cache_key(nodes[key], setting | ({"ids": [s.ids for s in plan.seqs]} if plan is not None else {}))
        if cache is not None and ck in cache:
            nodes[key], cached_plan = cache[ck]
            plan = plan or cached_plan
            continue
        emit(sink, "stage", STAGE, f"gate: {nodes[key].label}")
        plan = _hf_node(nodes[key], prompts, plan, chat_format=fmt, system=system, options=options,
                        stop_texts=stop_texts, sink=sink)
        if cache is not None:
            cache[ck] = (nodes[key], plan)
    for key in ("f16", "quant"):
        if key in nodes:
            ck = _cache_key(nodes[key], setting | {"ids": [s.ids for s in plan.seqs],
                                                   "modelfile": mf.render() if mf is not None else None})
            if cache is not None and ck in cache:
                nodes[key] = cache[ck][0]
                continue
            emit(sink, "stage", STAGE, f"gate: {nodes[key].label}")
            _gguf_node(nodes[key], prompts, plan, modelfile=mf, chat_format=fmt, system=system, options=options,
                       stop_texts=stop_texts, sink=sink)
            if cache is not None:
                cache[ck] = (nodes[key], plan)

    ref_stop = nodes[ref_key].stop_rate
    hops: list[HopResult] = []
    if qlora:
        hops.append(_hop("adapter (4-bit) -> merged", nodes.get("adapter-4bit"), nodes.get("merged"), "merge",
                         cfg.qlora_adapter_merged_top1, ref_stop, cfg, "no merged model"))
    hops.append(_hop("adapter -> merged", nodes.get("adapter"), nodes.get("merged"), "merge",
                     cfg.adapter_merged_top1, ref_stop, cfg, "no merged model", max_kl=cfg.adapter_merged_max_kl))
    f16_hop = _hop("merged -> F16", nodes.get("merged"), nodes.get("f16"), "conversion", cfg.merged_f16_top1,
                   ref_stop, cfg, "no merged model or F16 GGUF")
    hops.append(f16_hop)
    hops.append(_hop("F16 -> " + (nodes["quant"].label if "quant" in nodes else "quantized"), nodes.get("f16"),
                     nodes.get("quant"), "quantization", cfg.f16_quant_top1, ref_stop, cfg,
                     "no F16 or quantized GGUF"))
    if "f16" in nodes and nodes["f16"].tokenizer_mismatch and f16_hop.skipped is None:
        bad = nodes["f16"].tokenizer_mismatch
        f16_hop.fail(f"llama.cpp tokenizes {len(bad)} of {len(prompts)} prompts differently from the training "
                     f"tokenizer (first: {bad[0]})", "conversion")
    serving = nodes.get("quant") or nodes.get("f16")
    mf_hop = HopResult("Modelfile", "chat format " + fmt, "Modelfile", "template")
    if mf is None or serving is None:
        mf_hop.skipped = "no Modelfile" if mf is None else "no GGUF"
    else:
        for problem in check_modelfile(mf, serving.path, fmt):
            mf_hop.fail(problem, "template")
        served = _from_path(mf.from_, Path(modelfile).parent)
        if served is None or served.resolve() != Path(serving.path).resolve():
            mf_hop.fail(f"the Modelfile's FROM {mf.from_} is not the GGUF the gate checked ({serving.path})",
                        "template")
        if serving.runs_on:
            mf_hop.fail(f"{len(serving.runs_on)} answer(s) ran on past an end-of-turn text (first: "
                        f"{serving.runs_on[0]})", "template")
        mf_hop.stop_rate, mf_hop.reference_stop_rate = serving.stop_rate, ref_stop
    hops.append(mf_hop)
    report = GateReport(hops, len(prompts), dataclasses.asdict(cfg),
                        {k: (n.adapter or n.path) for k, n in nodes.items()} | ({"modelfile": str(modelfile)}
                                                                               if modelfile else {}),
                        time.perf_counter() - t0,
                        answers={n.label: n.answers for n in nodes.values()})
    for h in report.hops:
        emit(sink, "metric", STAGE, h.name, top1=h.top1, kl_mean=h.kl_mean, passed=h.passed, skipped=h.skipped)
    return report


def _cache_key(node: Node, setting: dict[str, Any]) -> str:
    import hashlib

    def stamp(path: str | None) -> Any:
        if path is None:
            return None
        p = Path(path)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]

    blob = json.dumps({"node": [node.key, node.kind, node.path, node.adapter, node.load_4bit],
                       "files": [stamp(node.path if Path(node.path).exists() else None), stamp(node.adapter)],
                       "setting": setting}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _hop(name: str, src: Node | None, dst: Node | None, cause: str, min_top1: float, ref_stop: float | None,
         cfg: Any, why_skipped: str, max_kl: float | None = None) -> HopResult:
    from .scoring import compare

    h = HopResult(name, src.label if src else "-", dst.label if dst else "-", cause, min_top1)
    if src is None or dst is None:
        h.skipped = why_skipped
        return h
    agree = total = 0
    kls: list[float] = []
    for a, b in zip(src.logits, dst.logits):
        g, n, kl = compare(a, b)
        agree, total = agree + g, total + n
        kls += kl
    h.positions = total
    h.top1 = agree / total if total else None
    h.kl_mean = statistics.fmean(kls) if kls else None
    h.kl_max = max(kls) if kls else None
    h.stop_rate, h.reference_stop_rate = dst.stop_rate, ref_stop
    h.max_kl = max_kl
    logits_ok = h.top1 is None or h.top1 >= min_top1
    if not logits_ok:
        h.fail(f"top-1 agreement {100 * h.top1:.1f}% < {100 * min_top1:.0f}% over {total} positions "
               f"(mean KL {h.kl_mean:.3g})", cause)
    if logits_ok and max_kl is not None and h.kl_mean is not None and h.kl_mean > max_kl:
        logits_ok = False
        h.fail(f"mean KL {h.kl_mean:.3g} > {max_kl:.0e} (top-1 agreement {100 * h.top1:.1f}%)", cause)
    if ref_stop is not None and h.stop_rate is not None and h.stop_rate < ref_stop - cfg.max_stop_rate_drop:
        drop = f"stop rate {100 * h.stop_rate:.0f}% vs the adapter's {100 * ref_stop:.0f}% (more than " \
               f"{100 * cfg.max_stop_rate_drop:.0f} points lower)"
        # The distributions agree but the answers do not stop: the prompt path (TEMPLATE, stops) differs.
        h.fail(drop, cause if not logits_ok or dst.kind == "hf" else "template")
    return h


# ---------------------------------------------------------------------------------------------------------------
# A run directory
# ---------------------------------------------------------------------------------------------------------------

def gate_for_run(run_dir: str | Path, *, config: Any = None, prompts: Sequence[EvalPrompt] | None = None,
                 limit: int | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 workdir: str | Path | None = None, sink: Sink | None = None) -> GateReport:
    """The gate over a run directory's chain. Intermediates the run did not keep (merged/, the F16 GGUF) are
    rebuilt into ``workdir`` (a temporary folder by default) from the adapter, as the export stage made them."""
    import tempfile

    import yaml

    from .. import recipe as recipes
    from ..backends.transformers import adapter_meta
    from ..runs import RunDir
    from .prompts import run_prompts

    run = RunDir(run_dir)
    if not run.adapter.is_dir():
        raise ForgeError(f"{run.root}: no adapter/ (the run has not trained yet)", "train first: forge train RECIPE")
    data = (yaml.safe_load(run.recipe.read_text(encoding="utf-8")) or {}) if run.recipe.is_file() else {}
    if config is None:
        r = recipes.from_dict(data, str(run.recipe)) if data else recipes.Recipe()
        config = r.gate
    meta = adapter_meta(run.adapter)
    base = str(meta.get("base_model") or data.get("base_model") or "")
    if not base:
        raise ForgeError(f"{run.root}: cannot tell the base model", "the recipe's base_model is empty")
    if prompts is None:
        prompts = run_prompts(run.root, limit if limit is not None else getattr(config, "prompts", 16)).prompts
    f16 = run.gguf("f16") if run.gguf("f16").is_file() else (run.gguf("bf16") if run.gguf("bf16").is_file() else None)
    modelfile = run.modelfile if run.modelfile.is_file() else None
    # The quantized GGUF gated is the one the Modelfile serves; without a Modelfile, the run's first one.
    quants = sorted(p for p in run.root.glob("model-*.gguf") if p.name.startswith("model-q"))
    quant = quants[0] if quants else None
    if modelfile is not None:
        from ..modelfile import read as read_modelfile

        served = _from_path(read_modelfile(modelfile).from_, run.root)
        if served is not None and (f16 is None or served.resolve() != f16.resolve()):
            quant = served
    qlora = meta.get("method") == "qlora"
    with tempfile.TemporaryDirectory(prefix="forge-gate-", dir=workdir) as tmp:
        merged = run.merged if (run.merged / "config.json").is_file() else None
        if merged is None:
            from ..merge import local_model_dir, merge_adapter

            merged = Path(tmp) / "merged"
            choice("gate_merged", str(merged), "the run kept no merged/ model: merging the adapter again for the "
                   "gate", sink=sink, stage=STAGE)
            merge_adapter(run.adapter, local_model_dir(base), merged, quantized_base=qlora, sink=sink)
        if f16 is None and quant is not None:
            from ..gguf.convert import convert_hf_to_gguf

            f16 = Path(tmp) / "model-f16.gguf"
            choice("gate_f16", str(f16), "the run kept no F16 GGUF: converting the merged model again for the gate",
                   sink=sink, stage=STAGE)
            convert_hf_to_gguf(merged, f16, sink=sink)
        return run_gate(prompts, adapter=run.adapter, base=base, merged=merged, f16=f16, quant=quant,
                        modelfile=modelfile, qlora=qlora, config=config, max_new_tokens=max_new_tokens, sink=sink)


def write_gate_report(report: GateReport, out_dir: str | Path) -> dict[str, Path]:
    from ..atomic import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "fidelity.json", "md": out / "fidelity.md"}
    write_text(paths["json"], json.dumps(report.to_json(), indent=2, ensure_ascii=False, default=str) + "\n")
    write_text(paths["md"], report.markdown())
    return paths
