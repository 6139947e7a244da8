"""What a model reference names for evaluation, and the backend (and in-process scorer) that runs it.

- an HF model directory (``config.json``) or Hub id: transformers in-process (backends/transformers.py);
- a LoRA adapter directory (``adapter_config.json``): the adapter, unmerged, on the base it was trained on;
- a GGUF file: llama.cpp in-process (backends/llamacpp.py), prompted as the Modelfile prompts Ollama;
- an Ollama name: Ollama's /api/chat (backends/ollama.py); no perplexity (Ollama returns log-probabilities only
  for what it generates);
- a run directory: as ``forge chat`` picks (Ollama when it has the pushed model, else the run's GGUF in-process).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..events import Sink

KINDS = ("hf", "adapter", "gguf", "ollama", "run")


@dataclasses.dataclass
class ModelSpec:
    ref: str  # what the user named
    kind: str  # one of KINDS
    path: str  # HF dir / Hub id / base for an adapter / GGUF path / Ollama name / run dir
    adapter: str | None = None  # kind "adapter": the adapter directory (path is its base)
    label: str = ""  # short name in tables and plots
    chat_format: str | None = None  # None: detected per model
    system: str | None = None  # None: the model's own default (training's, the format's, the Modelfile's)
    load_4bit: bool = False  # adapter trained with QLoRA, run on its 4-bit base

    def __post_init__(self) -> None:
        if not self.label:
            self.label = short_label(self.ref)


def short_label(ref: str) -> str:
    p = Path(ref)
    if len(p.parts) > 2:
        return "/".join(p.parts[-2:])
    return ref


def model_spec(ref: str, label: str | None = None, *, host: str | None = None) -> ModelSpec:
    """Classify ``ref`` (see the module docstring)."""
    from ..backends.transformers import adapter_base, is_adapter_dir
    from ..modelref import resolve

    p = Path(ref).expanduser()
    if is_adapter_dir(p):
        return ModelSpec(ref, "adapter", adapter_base(p), adapter=str(p), label=label or "")
    if p.is_dir() and not (p / "config.json").is_file():
        if (p / "recipe.resolved.yaml").is_file() or list(p.glob("*.gguf")) or (p / "Modelfile").is_file():
            return ModelSpec(ref, "run", str(p), label=label or "")

    def ollama_knows(name: str) -> bool:
        from ..ollama import Ollama

        with Ollama(host, timeout=3.0) as conn:
            return conn.show(name) is not None

    m = resolve(ref, ollama_knows)
    kind = {"hf_dir": "hf", "hf_id": "hf", "gguf": "gguf", "ollama": "ollama"}[m.kind]
    return ModelSpec(ref, kind, m.value, label=label or "")


@dataclasses.dataclass
class Opened:
    backend: Any  # ChatBackend
    scorer: Any | None  # HFScorer / GGUFScorer, None where perplexity is not available
    why_no_ppl: str = ""
    eot_text: str | None = None  # the end-of-turn text a reference answer ends with (scored as its last token)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
        self.backend.close()


def open_model(spec: ModelSpec, *, host: str | None = None, score: bool = True, sink: Sink | None = None) -> Opened:
    if spec.kind in ("hf", "adapter"):
        from ..backends.transformers import TransformersBackend
        from .scoring import HFScorer

        b = TransformersBackend(spec.path, adapter=spec.adapter, chat_format=spec.chat_format, system=spec.system,
                                load_4bit=spec.load_4bit, sink=sink)
        return Opened(b, HFScorer(b) if score else None, "", _eot(b))
    from ..backends import open_backend

    backend_kind = {"gguf": "llamacpp", "ollama": "ollama", "run": "auto"}[spec.kind]
    b = open_backend(spec.path, backend_kind, host=host, chat_format=spec.chat_format, system=spec.system,
                     sink=sink)
    if b.name == "llamacpp":
        from .scoring import tune_threads

        tune_threads(b.llm)
    if b.name == "llamacpp" and score:
        from .scoring import GGUFScorer

        return Opened(b, GGUFScorer(b.model), "", _eot(b))
    why = "Ollama returns log-probabilities only for what it generates" if b.name == "ollama" else "not scored"
    return Opened(b, None, why, _eot(b))


def _eot(backend: Any) -> str | None:
    bound = getattr(backend, "bound", None)
    if bound is None or not bound.end_of_turn:
        return None
    return bound.end_of_turn[0]

