"""``forge quantize IN.gguf --type Q4_K_M [-o OUT]``: llama.cpp's quantizer, with sizes, time and fallbacks."""

from __future__ import annotations

import argparse

HELP = "quantize a GGUF with llama.cpp (Q4_K_M by default)"
TYPES = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0")  # = quantize.QUANT_TYPES (kept light here)
DESCRIPTION = ("Quantize an F16/BF16/F32 GGUF with llama.cpp's quantizer (run in a child process; its log goes to "
               "logs/<output>.quantize.log beside the output). Reports sizes before/after, time, and which "
               "tensors fell back to another type because their rows are not a multiple of the block size.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN.gguf", help="GGUF to quantize (as written by forge convert)")
    p.add_argument("--type", default="Q4_K_M", type=str.upper, choices=TYPES, help="quantization (default Q4_K_M)")
    p.add_argument("-o", "--output", metavar="OUT.gguf",
                   help="output file (default: the input's name with -<type> instead of -f16)")
    p.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default: all cores)")
    p.add_argument("--log", metavar="FILE", help="where llama.cpp's log goes")


def run(args: argparse.Namespace) -> int:
    from ..errors import ForgeError
    from ..modelref import resolve
    from ..quantize import QuantizeConfig, quantize_gguf

    ref = resolve(args.input)
    if ref.kind != "gguf":
        raise ForgeError(f"{args.input}: forge quantize needs a GGUF file ({ref.kind} given)",
                         "convert the model first: forge convert HF_DIR -o model-f16.gguf")
    report = quantize_gguf(ref.value, args.output,
                           QuantizeConfig(type=args.type, nthread=args.threads, log_path=args.log))
    print(report.summary())
    print(f"llama.cpp log: {report.log_path}")
    return 0
