"""Chat with a Hugging Face model in this process (transformers), optionally with a LoRA adapter on top (PEFT).

The same prompt path as the other backends: the registry chat format's rendering of the conversation
(``formats.render_prompt``, what Ollama renders from the Modelfile's TEMPLATE), tokenized by the model's own tokenizer
with its special tokens (BOS when the tokenizer adds one, as llama.cpp does from the converted
``add_bos_token``). Sampling starts from Ollama's defaults, then the format's PARAMETERs, then the caller's options
(``temperature`` 0 is greedy); generation ends at an end-of-generation token (the format's end-of-turn tokens and
the model's EOS ids) or a stop string (cut from the text), or after ``num_predict`` tokens, as under Ollama.

This is what the evaluator and the fidelity gate run HF directories and adapters on: an adapter is applied
unmerged (PEFT), which is the reference the merged model must reproduce. ``logits(ids)`` gives teacher-forced
next-token logits for perplexity and hop comparisons.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import ForgeError
from ..events import Sink, choice
from . import ChatStats, ChatStream, Message

STAGE = "chat"
ADAPTER_META = "forge_adapter.json"  # written by forge's trainer beside adapter_config.json
# fp32 unless the weights would take more than this fraction of RAM: bf16 matmuls are about 3x slower on CPU
# (stack-notes), and fp32 logits are what the fidelity gate's 100% adapter->merged agreement is measured in.
FP32_RAM_FRACTION = 0.4


def is_adapter_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def adapter_meta(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """forge_adapter.json of an adapter forge trained ({} for other adapters)."""
    p = Path(adapter_dir) / ADAPTER_META
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def adapter_base(adapter_dir: str | os.PathLike) -> str:
    """The base model an adapter was trained on: forge's record, else PEFT's base_model_name_or_path."""
    meta = adapter_meta(adapter_dir)
    if meta.get("base_model"):
        return str(meta["base_model"])
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ForgeError(f"{adapter_dir}: the adapter does not say which base it was trained on",
                         "pass the base model explicitly")
    return str(base)


def adapter_format(adapter_dir: str | os.PathLike) -> str | None:
    fmt = adapter_meta(adapter_dir).get("chat_format")
    if isinstance(fmt, dict):
        return fmt.get("name")
    return fmt if isinstance(fmt, str) else None


@functools.lru_cache(maxsize=1)
def busy_aware_threads() -> int:
    """CPU threads for torch and llama.cpp here: the physical-core estimate, fewer when the machine is already busy.

    Both run OpenMP teams that spin at their barriers, so on busy cores a two-thread team waits for a descheduled
    thread: a 16-token llama.cpp batch of the test model took 330 ms with 2 threads at load 7 on 2 CPUs and 0.8 ms
    with 1 (measured). Decided once per process, from the 1-minute load average.
    """
    from .llamacpp import default_threads

    n = default_threads()
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return n
    free = max(1, int(cpus - load + 0.5))
    if free < n:
        choice("threads", free, f"load average {load:.1f} on {cpus} CPUs: a {n}-thread team would spin waiting "
               "for busy cores", stage=STAGE)
        return free
    return n


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def choose_dtype(model_dir: Path, requested: str = "auto", sink: Sink | None = None) -> str:
    if requested != "auto":
        return requested
    size = _weights_bytes(model_dir)
    ram = _available_ram()
    # Saved weights are mostly bf16/fp16 (2 bytes per parameter) or fp32 (4): the fp32 size is at most 2x the files.
    fp32 = size * 2 if size else 0
    if ram is None or fp32 <= ram * FP32_RAM_FRACTION:
        choice("dtype", "float32", f"weights take {fp32 / 2**30:.2f} GiB in fp32"
               + (f", {ram / 2**30:.1f} GiB RAM available" if ram else "")
               + ": exact enough for hop-by-hop comparison, and fastest on CPU", sink=sink, stage=STAGE)
        return "float32"
    choice("dtype", "bfloat16", f"fp32 weights ({fp32 / 2**30:.1f} GiB) would exceed {FP32_RAM_FRACTION:.0%} of "
           f"available RAM ({ram / 2**30:.1f} GiB)", sink=sink, stage=STAGE)
    return "bfloat16"


def load_hf(model: str | os.PathLike, *, adapter: str | os.PathLike | None = None, dtype: str = "auto",
            load_4bit: bool = False, sink: Sink | None = None) -> tuple[Any, Any, Path]:
    """(model, tokenizer, model directory): the HF model, with ``adapter`` applied unmerged when given.

    ``load_4bit`` loads the base in 4-bit NF4 with double quantization, as forge's QLoRA training does, so the adapter
    runs on the weights it was trained on. The tokenizer comes from the adapter directory when training saved one
    there (its chat template and any added tokens are what the model was trained with).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..merge import local_model_dir

    model_dir = local_model_dir(str(model))
    tok_dir = Path(adapter) if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() \
        else model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    kw: dict[str, Any] = {}
    if load_4bit:
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
        kw["device_map"] = {"": "cpu"}
        kw["dtype"] = torch.float32
    else:
        kw["dtype"] = getattr(torch, choose_dtype(model_dir, dtype, sink))
    net = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw)
    if adapter is not None:
        from peft import PeftModel

        rows = net.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:  # training added tokens: the adapter's saved embedding rows need room
            net.resize_token_embeddings(len(tokenizer))
        net = PeftModel.from_pretrained(net, str(adapter))
    net.eval()
    return net, tokenizer, model_dir


class TransformersBackend:
    """An HF model directory (or an adapter on its base) behind the ChatBackend protocol."""

    name = "transformers"

    def __init__(self, model: str, *, adapter: str | None = None, chat_format: str | None = None,
                 system: str | None = None, dtype: str = "auto", load_4bit: bool = False,
                 n_threads: int | None = None, sink: Sink | None = None):
        import torch

        from .. import formats

        if adapter is None and is_adapter_dir(model):
            adapter, model = model, adapter_base(model)
        self.model = str(adapter or model)
        self.adapter = adapter
        threads = n_threads or busy_aware_threads()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)  # process-wide in torch
        self.net, self.tokenizer, self.model_dir = load_hf(model, adapter=adapter, dtype=dtype, load_4bit=load_4bit,
                                                           sink=sink)
        meta = adapter_meta(adapter) if adapter else {}
        fmt_name = chat_format or (adapter_format(adapter) if adapter else None)
        det = formats.detect(self.tokenizer, fmt_name, sink=sink)
        if det.format is None:
            raise ForgeError(f"{self.model}: chat format unknown ({det.reason})",
                             f"pass --chat-format NAME (one of: {', '.join(formats.names())})")
        self.format = det.format
        self.eos_text = self.tokenizer.eos_token
        self.bound = det.format.bind(add_bos=False, eos_token=self.eos_text)
        self.stops = [s for s in self.bound.stop if s]
        if system is not None:
            self.system = system
        elif meta.get("system_prompt") is not None:
            self.system = meta["system_prompt"]  # serving's SYSTEM defaults to the one training used
        else:
            self.system = self.format.default_system
        from .llamacpp import OLLAMA_DEFAULTS

        self.defaults = {**OLLAMA_DEFAULTS, **dict(self.format.parameters)}
        self.eog_ids = self._eog_ids()
        self.lock = threading.Lock()

    def _eog_ids(self) -> set[int]:
        """Token ids that end generation: the format's end-of-turn tokens and the model's EOS ids (llama.cpp's EOG
        set holds both, converted from the same config)."""
        ids: set[int] = set()
        for text in self.bound.end_of_turn:
            enc = self.tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1:
                ids.add(enc[0])
        for src in (getattr(self.net, "generation_config", None), getattr(self.net, "config", None)):
            eos = getattr(src, "eos_token_id", None) if src is not None else None
            for i in (eos if isinstance(eos, (list, tuple)) else [eos]):
                if isinstance(i, int):
                    ids.add(i)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    def close(self) -> None:
        self.net = None

    # ---- prompt and token ids ----
    def prompt(self, messages: list[Message]) -> str:
        from .. import formats

        return formats.render_prompt(self.format, messages, system=self.system, eos_token=self.eos_text)

    def encode_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokens(self, messages: list[Message]) -> list[int]:
        return self.encode_prompt(self.prompt(messages))

    def logits(self, ids: list[int]):
        """Teacher-forced next-token logits (len(ids), vocab) as a float32 torch tensor."""
        import torch

        with torch.no_grad():
            out = self.net(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
        return out.logits[0].float()

    # ---- generation ----
    def chat(self, messages: list[Message], options: dict[str, Any] | None = None) -> ChatStream:
        t0 = time.perf_counter()
        opts = {**self.defaults, **(options or {})}
        stops = list(self.stops) + [s for s in opts.pop("stop", None) or [] if s not in self.stops]
        return ChatStream(self._run(self.tokens(messages), opts, stops, t0))

    def _cache_kw(self) -> str:
        """transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40)."""
        import inspect

        inner = self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net
        return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"

    def _pick(self, logits, opts: dict[str, Any], gen):
        import torch

        temp = float(opts.get("temperature", 0.8))
        if temp <= 0:
            return int(torch.argmax(logits))
        logits = logits / temp
        top_k = int(opts.get("top_k", 40) or 0)
        if 0 < top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, -1)
        top_p = float(opts.get("top_p", 1.0))
        if top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            keep = torch.cumsum(sp, -1) - sp < top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[si[keep]] = True
            probs = probs * mask
        min_p = float(opts.get("min_p", 0.0))
        if min_p > 0:
            probs = probs * (probs >= probs.max() * min_p)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def _run(self, prompt: list[int], opts: dict[str, Any], stops: list[str], t0: float) -> Iterator[Any]:
        import torch

        from . import StopFilter

        limit = int(opts.get("num_predict", -1))
        ctx = int(getattr(self.net.config, "max_position_embeddings", 0) or 4096)
        room = max(0, ctx - len(prompt))
        limit = room if limit < 0 else min(limit, room)
        seed = int(opts.get("seed", -1))
        gen = torch.Generator().manual_seed(seed if seed >= 0 else time.time_ns() & 0x7FFFFFFF)
        repeat_penalty = float(opts.get("repeat_penalty", 1.0))
        out_ids: list[int] = []
        emitted = ""  # decoded text already considered (yielded or held)
        filt = StopFilter(stops)
        count = 0
        first = None
        reason = "length"
        cache_kw = self._cache_kw()
        with self.lock, torch.no_grad():
            past = None
            feed = torch.tensor([prompt], dtype=torch.long)
            while count < limit:
                out = self.net(input_ids=feed, use_cache=True, **{cache_kw: past})
                past = getattr(out, "cache", None) if cache_kw == "cache" else out.past_key_values
                logits = out.logits[0, -1].float()
                if repeat_penalty != 1.0 and out_ids:
                    seen = torch.tensor(sorted(set(out_ids)))
                    vals = logits[seen]
                    logits[seen] = torch.where(vals > 0, vals / repeat_penalty, vals * repeat_penalty)
                tok = self._pick(logits, opts, gen)
                count += 1
                if first is None:
                    first = time.perf_counter()
                if tok in self.eog_ids:
                    reason = "stop"
                    break
                out_ids.append(tok)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=False)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                    feed = torch.tensor([[tok]], dtype=torch.long)
                    continue
                piece = text[len(emitted):]
                emitted = text
                feed = torch.tensor([[tok]], dtype=torch.long)
                shown = filt.feed(piece)
                if shown:
                    yield shown
                if filt.hit:
                    reason = "stop"
                    break
        rest = ""
        if reason == "length":
            rest = self.tokenizer.decode(out_ids, skip_special_tokens=False)[len(emitted):]
        tail = filt.flush(rest)
        if tail:
            yield tail
        end = time.perf_counter()
        first = first or end
        yield ChatStats(backend=self.name, model=self.model, prompt_tokens=len(prompt), tokens=count,
                        tokens_per_s=count / (end - first) if end > first else 0.0, ttft_s=first - t0,
                        total_s=end - t0, done_reason=reason)
