"""Evaluation: is the tuned model better (``run_eval``), and did every export hop keep it (``fidelity.run_gate``)?

- ``prompts``: held-out prompts from a file or a run's eval split, with optional reference answers.
- ``runner``: ``run_eval(models, prompts) -> EvalReport`` and ``eval_run(run_dir)`` (base vs tuned).
- ``report``: terminal table, ``write_reports(report, out_dir)`` -> eval.json, eval.md, eval.png.
- ``fidelity``: ``run_gate(...) -> GateReport``: adapter -> merged -> F16 GGUF -> quantized GGUF, hop by hop.
- ``metrics``: exact / contains / ROUGE-L and bootstrap confidence intervals.
- ``scoring``: teacher-forced logits from HF (transformers) and GGUF (llama.cpp) for perplexity and hop comparison.

Nothing heavy is imported here: torch, transformers, peft, llama_cpp, numpy and matplotlib load inside the
functions that use them.
"""

from __future__ import annotations

from .prompts import EvalPrompt, load_prompts, run_prompts
from .report import table, write_reports
from .runner import EvalReport, eval_run, run_eval

__all__ = ["EvalPrompt", "load_prompts", "run_prompts", "EvalReport", "run_eval", "eval_run", "table",
           "write_reports"]
