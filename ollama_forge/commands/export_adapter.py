"""``forge export-adapter RUN_DIR -o ADAPTER.gguf``: the LoRA adapter as a GGUF adapter (llama.cpp --lora, ADAPTER)."""

from __future__ import annotations

import argparse

HELP = "export a LoRA adapter as a GGUF adapter (llama.cpp --lora, Ollama ADAPTER)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="a run directory (adapter/ + recipe.resolved.yaml)")
    p.add_argument("--adapter", help="PEFT adapter directory (instead of a run directory)")
    p.add_argument("--base", help="base model: HF directory or id (default: the run's base_model)")
    p.add_argument("--outtype", choices=["f32", "f16"], default="f32", help="adapter tensor type (f32: exact)")
    p.add_argument("-o", "--output", help="output GGUF (default: RUN_DIR/adapter.gguf)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ForgeError
    from ..gguf.adapter import export_adapter
    from ..merge import local_model_dir, resolve_run

    if args.run_dir:
        adapter, base_ref, _ = resolve_run(args.run_dir)
        base_ref = args.base or base_ref
        out = Path(args.output) if args.output else Path(args.run_dir) / "adapter.gguf"
    else:
        if not (args.adapter and args.base and args.output):
            raise ForgeError("without a run directory, --adapter, --base and -o are all needed",
                             "e.g. forge export-adapter --adapter run/adapter --base Qwen/Qwen2.5-0.5B -o a.gguf")
        adapter, base_ref, out = Path(args.adapter), args.base, Path(args.output)
    rep = export_adapter(adapter, local_model_dir(base_ref), out, outtype=args.outtype)
    print(f"wrote {rep.output}: {rep.pairs} LoRA pairs, alpha {rep.alpha:g}"
          f"{' (scales folded into lora_b)' if rep.folded_scale else ''}, {rep.bytes_out / 1e6:.1f} MB")
    print(f"use it on the base GGUF: Modelfile `ADAPTER {rep.output}` or `llama-cli -m BASE.gguf --lora {rep.output}`")
    return 0
