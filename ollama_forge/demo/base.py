"""The demo's base model: a small Llama-architecture model pretrained briefly, on CPU, on the standard library's source.

Built from nothing but local files, deterministically:

1. a byte-level BPE tokenizer trained with ``tokenizers`` on the corpus (``corpus.pretraining_documents``), with
   Llama-3's exact pre-tokenizer (its Split regex, then ByteLevel without its own regex) so the GGUF converter maps
   it to llama.cpp's ``llama-bpe``; ``<|endoftext|>`` separates documents, and ChatML's ``<|im_start|>`` /
   ``<|im_end|>`` are in the vocabulary from the start (the registry's ``chatml`` template is installed), as in a
   Qwen-style base model;
2. a ``LlamaForCausalLM`` trained from a seeded init by a plain torch loop for a fixed number of steps (never
   time-boxed, so the same definition gives the same model on the same machine), on seq_len-token windows drawn from
   the token stream with a seeded generator;
3. ``save_pretrained`` into ``<cache>/base-<hash>/``, where the hash covers the definition (``BaseSpec``), the corpus
   fingerprint (Python version, module names and sizes), this module's ``BUILDER_VERSION`` and the versions of the
   libraries that write the files. The directory is written under a temporary name and renamed when complete, under a
   file lock, so concurrent demo runs build it once and a crash never leaves a half-written base.

The cache is ``$FORGE_DEMO_CACHE`` or ``~/.cache/ollama-forge/demo``. ``python -m ollama_forge.demo.base`` builds it
and prints where it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

from ..events import Sink, choice, emit
from . import corpus as C

STAGE = "base"
BUILDER_VERSION = 1
META = "forge_demo_base.json"

# Llama-3's pre-tokenizer Split regex, character for character (ollama_forge.gguf.vocab maps it to "llama-bpe").
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
ENDOFTEXT, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
# A pad token of its own, distinct from EOS and end of turn (as Llama-3.1's <|finetune_right_pad_id|>): training
# then pads with it and never has to grow the vocabulary, so the LoRA adapter alone still fits the base.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, PAD)


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    """Everything that defines the demo base model (its hash names the cache directory)."""

    vocab_size: int = dataclasses.field(default=2048, metadata={
        "help": "BPE vocabulary including the 4 special tokens; 2048 keeps embeddings + lm_head at 1 M of the "
                "model's parameters while common identifiers and words are still single tokens"})
    hidden_size: int = dataclasses.field(default=256, metadata={
        "help": "256: every weight row is a multiple of 256, so Q4_K_M quantizes it with real K-quants instead of "
                "falling back to Q5_0/Q8_0 as narrower models do"})
    intermediate_size: int = dataclasses.field(default=512, metadata={"help": "MLP width (a multiple of 256)"})
    num_hidden_layers: int = dataclasses.field(default=2, metadata={
        "help": "2 layers: about 1.7x the pretraining tokens/s of 4 at the same width (measured), and the "
                "demo task needs no depth"})
    num_attention_heads: int = dataclasses.field(default=4, metadata={"help": "head_dim 64"})
    num_key_value_heads: int = dataclasses.field(default=2, metadata={"help": "grouped-query attention, as Llama-3"})
    max_position_embeddings: int = dataclasses.field(default=512, metadata={
        "help": "context length; demo prompts are under 150 tokens"})
    rope_theta: float = dataclasses.field(default=10000.0, metadata={"help": "rotary base"})
    seq_len: int = dataclasses.field(default=128, metadata={"help": "tokens per pretraining window"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "windows per step"})
    steps: int = dataclasses.field(default=400, metadata={
        "help": "optimizer steps (fixed, never time-boxed): 400 x 16 x 128 = 0.8 M tokens"})
    learning_rate: float = dataclasses.field(default=3e-3, metadata={
        "help": "peak AdamW learning rate (small models tolerate a high one)"})
    warmup_steps: int = dataclasses.field(default=20, metadata={"help": "linear warm-up, then cosine to 10%"})
    weight_decay: float = dataclasses.field(default=0.1, metadata={"help": "AdamW weight decay"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed for init and window sampling"})
    corpus_modules: int = dataclasses.field(default=0, metadata={
        "help": "pretrain on the first N training modules only (0: all); tests build a smaller base this way"})


@dataclasses.dataclass
class BaseModel:
    path: Path
    key: str
    built: bool  # False: taken from the cache
    seconds: float
    meta: dict[str, Any]


def cache_root() -> Path:
    env = os.environ.get("FORGE_DEMO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ollama-forge" / "demo"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "tokenizers", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def definition(spec: BaseSpec, mods: list[C.Module] | None = None) -> dict[str, Any]:
    return {"builder": BUILDER_VERSION, "spec": dataclasses.asdict(spec), "corpus": C.fingerprint(mods),
            "held_out_every": C.HELD_OUT_EVERY, "versions": _versions()}


def cache_key(spec: BaseSpec, mods: list[C.Module] | None = None) -> str:
    blob = json.dumps(definition(spec, mods), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def base_path(spec: BaseSpec, root: Path | None = None, mods: list[C.Module] | None = None) -> Path:
    return (root or cache_root()) / f"base-{cache_key(spec, mods)}"


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename still keeps the result whole; a build may just repeat
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_base(spec: BaseSpec | None = None, root: Path | None = None, sink: Sink | None = None,
                mods: list[C.Module] | None = None) -> BaseModel:
    """The base model directory for ``spec``: from the cache when built before, else built now (atomically)."""
    spec = spec or BaseSpec()
    t0 = time.perf_counter()
    final = base_path(spec, root, mods)
    key = final.name.split("-", 1)[1]
    if not (final / META).is_file():
        with _locked(final.parent / f".{final.name}.lock"):
            if not (final / META).is_file():  # another process may have built it while we waited
                from ..atomic import atomic_path

                emit(sink, "stage", STAGE, f"building the demo base model (once; cached at {final})")
                with atomic_path(final) as tmp:
                    _build(spec, tmp, sink, mods, definition(spec, mods))
                meta = json.loads((final / META).read_text())
                return BaseModel(final, key, True, time.perf_counter() - t0, meta)
    choice("base_model", str(final), "cached: same definition, corpus and library versions", sink, STAGE)
    return BaseModel(final, key, False, time.perf_counter() - t0, json.loads((final / META).read_text()))


# ---------------------------------------------------------------------------------------------------------------
# Building


def train_tokenizer(spec: BaseSpec, documents: list[str]):
    """Byte-level BPE with Llama-3's pre-tokenizer; the special tokens take the last ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))  # Llama-3 sets ignore_merges; llama.cpp's llama-bpe does too
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size - len(SPECIAL_TOKENS), min_frequency=2,
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(documents, trainer=trainer)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _hf_tokenizer(tok, spec: BaseSpec, sink: Sink | None):
    from transformers import PreTrainedTokenizerFast

    from .. import formats

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=ENDOFTEXT, pad_token=PAD,
                                 clean_up_tokenization_spaces=False, model_max_length=spec.max_position_embeddings)
    formats.install(hf, formats.load("chatml"), sink=sink)  # <|im_start|>/<|im_end|> are reused, never added
    return hf


def _token_stream(tok, documents: list[str]):
    import torch

    eot = tok.token_to_id(ENDOFTEXT)
    ids: list[int] = []
    for enc in tok.encode_batch(documents, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def _lr(step: int, spec: BaseSpec) -> float:
    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, stream, spec: BaseSpec, sink: Sink | None = None) -> list[float]:
    """The plain, seeded pretraining loop; returns the loss every 10 steps."""
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.learning_rate, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    n_windows = len(stream) - spec.seq_len - 1
    t0 = time.perf_counter()
    for step in range(spec.steps):
        starts = torch.randint(0, n_windows, (spec.batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + spec.seq_len] for s in starts.tolist()])
        for g in opt.param_groups:
            g["lr"] = _lr(step, spec)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == spec.steps - 1:
            losses.append(round(float(loss.detach()), 4))
            elapsed = time.perf_counter() - t0
            eta = elapsed / (step + 1) * (spec.steps - step - 1)
            emit(sink, "metric", STAGE, f"step {step + 1}/{spec.steps} loss {losses[-1]:.3f}", step=step + 1,
                 loss=losses[-1])
            emit(sink, "progress", STAGE, "pretraining", step=step + 1, total=spec.steps, eta_s=eta)
    model.eval()
    return losses


def _build(spec: BaseSpec, out: Path, sink: Sink | None, mods: list[C.Module] | None,
           defn: dict[str, Any]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    mods = C.modules() if mods is None else mods
    documents = C.pretraining_documents(mods)
    if spec.corpus_modules:
        documents = documents[:spec.corpus_modules]
    chars = sum(map(len, documents))
    emit(sink, "log", STAGE, f"corpus: {len(documents)} stdlib modules ({chars / 1e6:.1f} M characters; "
                             f"the {sum(m.held_out for m in mods)} held-out modules excluded)")
    tok = train_tokenizer(spec, documents)
    hf_tok = _hf_tokenizer(tok, spec, sink)
    stream = _token_stream(tok, documents)
    t_tok = time.perf_counter() - t0
    emit(sink, "log", STAGE, f"tokenizer: {tok.get_vocab_size()} tokens (byte-level BPE, llama-bpe pre-tokenizer); "
                             f"corpus is {len(stream) / 1e6:.2f} M tokens ({t_tok:.1f}s)")
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta, rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=None, eos_token_id=tok.token_to_id(ENDOFTEXT), pad_token_id=tok.token_to_id(PAD))
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    choice("torch_threads", torch.get_num_threads(), "torch's default for this machine (results may differ in the "
           "last bits on another thread count)", sink, STAGE)
    t1 = time.perf_counter()
    losses = pretrain(model, stream, spec, sink)
    t_train = time.perf_counter() - t1
    tokens = spec.steps * spec.batch_size * spec.seq_len
    tail = losses[-5:]
    emit(sink, "log", STAGE, f"pretrained {n_params / 1e6:.2f} M parameters for {spec.steps} steps ({tokens / 1e6:.2f} "
                             f"M tokens) in {t_train:.0f}s: loss {losses[0]:.2f} -> {sum(tail) / len(tail):.2f} "
                             "(mean over the last ~50 steps)")
    out.mkdir(parents=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for a 9 MB file is noise in the demo's output
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    meta = {"definition": defn, "parameters": n_params, "corpus_documents": len(documents), "corpus_chars": chars,
            "corpus_tokens": int(len(stream)), "pretraining_tokens": tokens, "losses": losses,
            "seconds": {"tokenizer": round(t_tok, 1), "pretraining": round(t_train, 1)},
            "threads": torch.get_num_threads()}
    (out / META).write_text(json.dumps(meta, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else None

    def sink(ev) -> None:
        if ev.kind in ("stage", "log") or (ev.kind == "metric" and ev.data.get("step", 0) % 50 in (0, 1)):
            print(f"{ev.stage}: {ev.message}", flush=True)

    b = ensure_base(root=root, sink=sink)
    print(f"{b.path} ({'built' if b.built else 'cached'} in {b.seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
