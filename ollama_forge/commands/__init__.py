"""The table of ``forge`` subcommands.

Each built command is a module here with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; the module
imports nothing heavy at top level (``forge --help`` stays instant). A command whose issue has not landed yet is
listed with that issue's number, so ``forge X`` says what brings it.
"""

from __future__ import annotations

# name -> (module or None, one-line help, issue that brings it)
COMMANDS: dict[str, tuple[str | None, str, int]] = {
    "data": ("ollama_forge.commands.data", "check and inspect training data (formats, validation, token lengths)", 2),
    "formats": ("ollama_forge.commands.formats", "list chat formats, or show one (Jinja, Ollama TEMPLATE, stops)", 3),
    "modelfile": ("ollama_forge.commands.modelfile", "write an Ollama Modelfile for a GGUF from its chat format", 3),
    "convert": ("ollama_forge.commands.convert", "convert an HF model directory to GGUF (f16/bf16/f32/q8_0)", 4),
    "quantize": ("ollama_forge.commands.quantize", "quantize a GGUF with llama.cpp (Q4_K_M by default)", 4),
    "train": ("ollama_forge.commands.train", "fine-tune with LoRA or QLoRA (SFT, then optional DPO)", 5),
    "merge": ("ollama_forge.commands.merge", "merge a LoRA adapter into its full-precision base, streaming", 6),
    "export": ("ollama_forge.commands.export", "merge and convert straight to GGUF in one streaming pass", 6),
    "export-adapter": ("ollama_forge.commands.export_adapter", "export a LoRA adapter as a GGUF adapter (llama.cpp --lora, Ollama ADAPTER)", 6),
    "push": ("ollama_forge.commands.push", "register a model with Ollama (upload, create, verify)", 7),
    "chat": ("ollama_forge.commands.chat", "chat with one model, or two side by side", 7),
    "models": ("ollama_forge.commands.models", "list Ollama models made by forge, with lineage", 7),
    "eval": ("ollama_forge.commands.eval", "evaluate models on held-out prompts; fidelity gate over every export hop",
             8),
    "run": ("ollama_forge.commands.run", "run the whole chain from a recipe, cached and resumable", 9),
    "demo": ("ollama_forge.commands.demo", "offline demo of the whole chain on a tiny model (CPU)", 9),
    "tui": ("ollama_forge.commands.tui", "open the terminal UI", 10),
}
