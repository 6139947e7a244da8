"""``forge export RUN_DIR | --adapter DIR --base MODEL -o OUT.gguf``: merge + convert in one streaming pass."""

from __future__ import annotations

import argparse

HELP = "merge and convert straight to GGUF in one streaming pass"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="a run directory (adapter/ + recipe.resolved.yaml)")
    p.add_argument("--adapter", help="PEFT adapter directory (instead of a run directory)")
    p.add_argument("--base", help="base model: HF directory or id (default: the run's base_model)")
    p.add_argument("--to", choices=["gguf"], default="gguf", help="output format (gguf)")
    p.add_argument("--outtype", choices=["f16", "bf16", "f32", "q8_0"], default="f16", help="GGUF tensor type")
    p.add_argument("-o", "--output", help="output GGUF (default: RUN_DIR/model-<outtype>.gguf)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ForgeError
    from ..merge import export_gguf, local_model_dir, resolve_run

    quantized = False
    if args.run_dir:
        adapter, base_ref, quantized = resolve_run(args.run_dir)
        base_ref = args.base or base_ref
        out = Path(args.output) if args.output else Path(args.run_dir) / f"model-{args.outtype}.gguf"
    else:
        if not (args.adapter and args.base and args.output):
            raise ForgeError("without a run directory, --adapter, --base and -o are all needed",
                             "e.g. forge export --adapter run/adapter --base Qwen/Qwen2.5-0.5B -o model.gguf")
        adapter, base_ref, out = Path(args.adapter), args.base, Path(args.output)
    if not base_ref:
        raise ForgeError("no base model known for this adapter", "pass --base MODEL")
    rep = export_gguf(adapter, local_model_dir(base_ref), out, outtype=args.outtype, quantized_base=quantized)
    how = "in one streaming pass" if rep.one_pass else "via a temporary merged copy"
    print(f"exported {rep.output} ({rep.convert.bytes_out / 1e6:.1f} MB, {rep.merged_modules} LoRA modules merged "
          f"{how}) in {rep.seconds:.1f} s")
    return 0
