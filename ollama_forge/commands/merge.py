"""``forge merge RUN_DIR | --adapter DIR --base MODEL -o OUT_DIR``: streaming LoRA merge into the full base."""

from __future__ import annotations

import argparse

HELP = "merge a LoRA adapter into its full-precision base, streaming"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="a run directory (adapter/ + recipe.resolved.yaml)")
    p.add_argument("--adapter", help="PEFT adapter directory (instead of a run directory)")
    p.add_argument("--base", help="base model: HF directory or id (default: the run's base_model)")
    p.add_argument("-o", "--output", help="output HF directory (default: RUN_DIR/merged)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (default: the base's)")
    p.add_argument("--qlora", action="store_true", help="the adapter was trained on a 4-bit base (logged; the "
                   "merge always uses full-precision weights)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import ForgeError
    from ..merge import local_model_dir, merge_adapter, resolve_run

    quantized = args.qlora
    if args.run_dir:
        if args.adapter:
            raise ForgeError("give a run directory or --adapter, not both", "drop one of them")
        adapter, base_ref, q = resolve_run(args.run_dir)
        quantized = quantized or q
        base_ref = args.base or base_ref
        out = Path(args.output) if args.output else Path(args.run_dir) / "merged"
    else:
        if not (args.adapter and args.base and args.output):
            raise ForgeError("without a run directory, --adapter, --base and -o are all needed",
                             "e.g. forge merge --adapter run/adapter --base Qwen/Qwen2.5-0.5B -o merged/")
        adapter, base_ref, out = Path(args.adapter), args.base, Path(args.output)
    if not base_ref:
        raise ForgeError("no base model known for this adapter", "pass --base MODEL")
    base = local_model_dir(base_ref)
    rep = merge_adapter(adapter, base, out, out_dtype=args.dtype, quantized_base=quantized)
    print(f"merged {rep.merged_modules} LoRA modules ({rep.replaced_tensors} full tensors replaced) into "
          f"{rep.tensors} tensors in {rep.seconds:.1f} s -> {rep.output} ({rep.bytes_out / 1e6:.1f} MB)")
    return 0
