"""``forge convert HF_DIR -o OUT.gguf``: an HF model directory to a GGUF llama.cpp and Ollama load."""

from __future__ import annotations

import argparse

HELP = "convert an HF model directory to GGUF (f16/bf16/f32/q8_0)"
DESCRIPTION = ("Convert a Hugging Face model directory (config.json, *.safetensors, tokenizer files) to GGUF, "
               "streaming tensor by tensor. Supported: llama, mistral, qwen2, qwen3, gemma2, gemma3 (text), phi3. "
               "Quantize the result with `forge quantize`.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="HF_DIR", help="Hugging Face model directory")
    p.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="GGUF file to write")
    p.add_argument("--outtype", choices=["f16", "bf16", "f32", "q8_0"], default="f16",
                   help="type of the 2-D weights (default f16; norms and biases stay f32)")
    p.add_argument("--name", help="general.name written into the file (default: the directory name)")


def run(args: argparse.Namespace) -> int:
    from ..errors import ForgeError
    from ..gguf.convert import ConvertConfig, convert_hf_to_gguf
    from ..modelref import resolve

    ref = resolve(args.model)
    if ref.kind != "hf_dir":
        what = {"gguf": "is already a GGUF file", "ollama": "is an Ollama model name",
                "hf_id": "is not a local directory"}[ref.kind]
        raise ForgeError(f"{args.model} {what}; forge convert needs a local Hugging Face model directory",
                         "download the model (e.g. huggingface-cli download ORG/NAME --local-dir DIR) and pass DIR")
    report = convert_hf_to_gguf(ref.value, args.output, ConvertConfig(outtype=args.outtype, name=args.name))
    print(f"{report.output}: {report.gguf_architecture} ({report.architecture}), {report.outtype}, "
          f"{report.n_tensors} tensors, {report.n_tokens} tokens ({report.vocab_source}), "
          f"{report.bytes_out / 1e6:.1f} MB in {report.seconds:.1f}s")
    return 0
