"""In-process chat (forge's llama.cpp backend) beside raw llama-cpp-python, streaming the same tokens from a
Qwen2.5-0.5B-shaped Q4_K_M GGUF (random weights, built once by forge convert + forge quantize).

Both sides: the same prompt tokens (the chatml rendering forge uses), greedy decoding, the same number of generated
tokens (both must end by the length limit, so neither stops early), the same n_ctx and threads, separate Llama
instances on the same file, each evaluating the prompt from scratch every run. Raw is
``Llama.create_completion(prompt_tokens, stream=True)``, the library's own streaming path. Runs alternate (raw, forge
/ forge, raw ...) after one warm-up each; medians are printed. Goal: forge's decode tokens/s >= 0.95x raw's.
Decode tokens/s = (tokens - 1) / (time after the first token); end-to-end = tokens / (call to last token).

    .venv/bin/python bench/chat.py [--runs 5] [--tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import CACHE, qwen05b  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def q4km_gguf() -> Path:
    """The 0.5B-shaped model as Q4_K_M (converted and quantized once, then cached)."""
    out = CACHE / "qwen05b-q4_k_m.gguf"
    if out.is_file():
        return out
    from ollama_forge.gguf.convert import convert_hf_to_gguf
    from ollama_forge.quantize import QuantizeConfig, quantize_gguf

    f16 = CACHE / "qwen05b-f16.gguf"
    if not f16.is_file():
        convert_hf_to_gguf(qwen05b("bfloat16"), f16)
    quantize_gguf(f16, out, QuantizeConfig(type="Q4_K_M"))
    f16.unlink()
    return out


def run_raw(llm, tokens: list[int], n: int) -> tuple[float, float, int, str]:
    """(seconds to the first token, seconds after it, tokens, finish reason) for create_completion, prompt
    evaluated from scratch (``reset``: no KV-cache reuse from the previous run)."""
    from llama_cpp import StoppingCriteriaList

    marks: list[float] = []

    def first_token(_ids, _logits) -> bool:  # called once per sampled token; only the first time matters
        if not marks:
            marks.append(time.perf_counter())
        return False

    llm.reset()
    t0 = time.perf_counter()
    finish = None
    for chunk in llm.create_completion(tokens, max_tokens=n, temperature=0.0, top_k=40, top_p=0.9, min_p=0.0,
                                       repeat_penalty=1.0, stream=True, seed=0,
                                       stopping_criteria=StoppingCriteriaList([first_token])):
        finish = chunk["choices"][0]["finish_reason"] or finish
    end = time.perf_counter()
    first = marks[0] if marks else end
    return first - t0, end - first, n if finish == "length" else -1, str(finish)


def run_forge(backend, n: int) -> tuple[float, float, int, str]:
    """The same for forge's backend; its stats carry the time to the first token."""
    backend.llm.reset()
    t0 = time.perf_counter()
    stream = backend.chat(PROMPT, {"num_predict": n, "temperature": 0.0, "seed": 0})
    for _ in stream:
        pass
    end = time.perf_counter()
    ttft = stream.stats.ttft_s
    return ttft, (end - t0) - ttft, stream.stats.tokens, stream.stats.done_reason


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5, help="measured runs per side (after one warm-up each)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads (default: forge's choice). On a busy machine use 1: with more threads "
                         "than idle cores, llama.cpp's spinning barriers wait on descheduled threads and a "
                         "token takes 100x longer, which swamps any difference between the two sides")
    args = ap.parse_args()

    from ollama_forge.backends.llamacpp import LlamaCppBackend, choose_repack, default_threads, load_llama

    gguf = q4km_gguf()
    threads = args.threads or default_threads()
    repack = choose_repack(None)  # the same weight layout on both sides (off on AMX-advertising VMs: SIGILL)
    backend = LlamaCppBackend(str(gguf), chat_format="chatml", system="", n_ctx=args.ctx, n_threads=threads,
                              repack=repack)
    raw = load_llama(str(gguf), repack=repack, n_ctx=args.ctx, n_threads=threads, n_threads_batch=threads,
                     verbose=False)
    tokens = raw.tokenize(backend.prompt(PROMPT).encode("utf-8"), add_bos=True, special=True)
    assert tokens == backend.tokens(PROMPT), "both sides must start from the same prompt tokens"

    run_raw(raw, tokens, args.tokens)  # warm-up: page in the weights, build graphs
    run_forge(backend, args.tokens)
    results: dict[str, list[tuple[float, float, int, str]]] = {"raw": [], "forge": []}
    cpu: dict[str, list[float]] = {"raw": [], "forge": []}  # process CPU seconds per run (all threads)
    for i in range(args.runs):
        order = ("raw", "forge") if i % 2 == 0 else ("forge", "raw")
        for side in order:
            c0 = time.process_time()
            r = run_raw(raw, tokens, args.tokens) if side == "raw" else run_forge(backend, args.tokens)
            cpu[side].append(time.process_time() - c0)
            if r[2] != args.tokens or r[3] != "length":
                raise SystemExit(f"{side} generated {r[2]} tokens ({r[3]}), not {args.tokens}: counts must match")
            results[side].append(r)

    def rate(rs):  # decode tokens/s: the tokens after the first over the time after the first
        return statistics.median((n - 1) / d for _, d, n, _ in rs)

    def ttft(rs):
        return statistics.median(t for t, _, _, _ in rs)

    def total(rs):
        return statistics.median(n / (t + d) for t, d, n, _ in rs)

    import os

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"model {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB), prompt {len(tokens)} tokens, "
          f"{args.tokens} tokens x {args.runs} interleaved runs per side, {threads} threads, repack={repack}")
    print(f"{'':8}{'decode tok/s':>14}{'end-to-end tok/s':>18}{'first token s':>15}{'tok/CPU-s':>11}")
    for side in ("raw", "forge"):
        per_cpu = statistics.median(args.tokens / c for c in cpu[side])
        print(f"{side:8}{rate(results[side]):14.2f}{total(results[side]):18.2f}{ttft(results[side]):15.3f}"
              f"{per_cpu:11.2f}")
    ratio = rate(results["forge"]) / rate(results["raw"])
    cpu_ratio = statistics.median(cpu["raw"]) / statistics.median(cpu["forge"])
    print(f"forge/raw decode tokens/s: {ratio:.3f} (goal >= 0.95); end-to-end: "
          f"{total(results['forge']) / total(results['raw']):.3f}; tokens per CPU-second: {cpu_ratio:.3f}")
    print("(wall-clock ratios are only as steady as the machine: rerun on an idle one; the CPU-time ratio is "
          "the overhead measure that contention disturbs least)")
    backend.close()
    raw.close()


if __name__ == "__main__":
    main()
