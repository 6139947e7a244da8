"""The pre-flight planner: everything that would make ``forge run`` fail an hour in, checked before any stage runs.

``make_plan(recipe) -> Plan`` runs every check and collects every problem (it never stops at the first one):

- architecture: the base's ``config.json`` names an architecture the converter's table knows (``gguf/archs.py``)
- chat format: known to the registry, and its Jinja/Ollama template pair is the one the parity test proved (the
  ``proven_hash`` shipped with the registry equals the hash of the pair now)
- end of turn: the training data, tokenized exactly as training will, holds the end-of-turn token in the labels of
  every example (``train/preflight.py``): otherwise the tuned model never learns to stop
- disk: adapter, checkpoints, merged copy (when kept), F16 GGUFs and quantized files at their peak, against the free
  space where the run writes (and the gate's temporary merge against the temp folder)
- RAM: training and the fidelity gate, the larger of the two, against what is available
- Ollama name: valid by Ollama's rules

The estimates are deliberately simple (parameter count x bytes per parameter, plus activations from batch size,
sequence length and width) and printed with their parts, so a user can see what dominates. Two test hooks simulate a
small machine: ``FORGE_TEST_DISK_FREE`` and ``FORGE_TEST_RAM_FREE`` (bytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

from .errors import ForgeError

# Bits per weight of each llama.cpp type as written (block scales included): Q4_K_M mixes Q4_K with some Q6_K
# (4.85 bpw measured on Llama-3-8B by llama.cpp's quantize table); the rest from ggml's block layouts.
BITS_PER_WEIGHT = {"Q4_K_M": 4.85, "Q4_K_S": 4.58, "Q4_0": 4.5, "Q5_K_M": 5.69, "Q6_K": 6.56, "Q8_0": 8.5,
                   "f16": 16, "bf16": 16, "f32": 32, "q8_0": 8.5}
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
HEADROOM = 1.10  # 10% over the estimate: filesystem blocks, logs, the metadata the estimate leaves out


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


@dataclasses.dataclass
class Plan:
    recipe_path: str
    run_dir: Path
    checks: list[Check]
    estimates: dict[str, Any]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def text(self) -> str:
        lines = [f"pre-flight plan: {self.recipe_path} -> {self.run_dir}"]
        for c in self.checks:
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}"
                         + (f"  -> {c.hint}" if c.hint and not c.ok else ""))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe_path, "run_dir": str(self.run_dir), "ok": not self.problems,
                "checks": [dataclasses.asdict(c) for c in self.checks], "estimates": self.estimates}

    def raise_if_refused(self) -> None:
        if self.problems:
            names = ", ".join(c.name for c in self.problems)
            raise ForgeError(f"pre-flight: {len(self.problems)} problem(s) ({names}); nothing was run",
                             "each is listed above with its fix")


def human(n: float) -> str:
    from .pipeline import human as h

    return h(n)


# ---------------------------------------------------------------------------------------------------------------
# Model facts without loading the model


def safetensors_params(model_dir: Path) -> tuple[int, int]:
    """(parameter count, bytes on disk) of a model directory's safetensors files, from their headers only."""
    n = size = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        size += f.stat().st_size
        with open(f, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(hlen))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in t["shape"]:
                count *= d
            n += count
    return n, size


def config_params(c: dict[str, Any]) -> int:
    """Parameter count from a config (when the weights are not local yet): embeddings + per-layer attention/MLP."""
    c = {**c, **(c.get("text_config") or {})}
    h = int(c.get("hidden_size") or 0)
    layers = int(c.get("num_hidden_layers") or 0)
    inter = int(c.get("intermediate_size") or 4 * h)
    vocab = int(c.get("vocab_size") or 0)
    heads = int(c.get("num_attention_heads") or 1)
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or (h // heads if heads else 0))
    attn = h * heads * hd * 2 + h * kv * hd * 2
    emb = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return emb + layers * (attn + 3 * h * inter)


def _free_disk(path: Path) -> int:
    if os.environ.get("FORGE_TEST_DISK_FREE"):
        return int(os.environ["FORGE_TEST_DISK_FREE"])
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _free_ram() -> int | None:
    if os.environ.get("FORGE_TEST_RAM_FREE"):
        return int(os.environ["FORGE_TEST_RAM_FREE"])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # macOS and others: total physical memory (no cheap "available" figure without psutil)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# The checks


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except ForgeError as e:
        return Check(name, False, e.message, e.hint or "")


def make_plan(recipe, recipe_path: str = "recipe", *, sink=None) -> Plan:
    """Run every pre-flight check on ``recipe`` (its run_dir set); see the module docstring."""
    from . import formats
    from .modelref import resolve

    run_dir = Path(recipe.run_dir or "runs/run")
    checks: list[Check] = []
    est: dict[str, Any] = {}
    base_dir: Path | None = None
    config: dict[str, Any] | None = None

    # --- the base model -----------------------------------------------------------------------------------------
    def base_check() -> Check:
        nonlocal base_dir, config
        if not recipe.base_model:
            raise ForgeError("base_model: not set", "give a Hugging Face id or a local model directory")
        ref = resolve(recipe.base_model)
        if ref.kind == "hf_dir":
            base_dir = Path(ref.value)
            config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
            where = str(base_dir / "config.json")
        elif ref.kind == "hf_id":
            cached = _hub_config(ref.value, recipe.revision)
            if cached is None:
                raise ForgeError(f"base_model {ref.value}: config.json is neither in the local Hugging Face cache "
                                 "nor downloadable now", "check the id and your network, or download it first "
                                 "(huggingface-cli download)")
            config, where = cached
            snap = Path(where).parent
            if any(snap.glob("*.safetensors")):
                base_dir = snap
        else:
            raise ForgeError(f"base_model {recipe.base_model}: training needs Hugging Face weights ({ref.kind} given)",
                             "point base_model at an HF model directory or Hub id")
        from .gguf.archs import lookup

        arch = lookup(config, where)
        return Check("architecture", True, f"{(config.get('architectures') or ['?'])[0]} -> GGUF {arch.gguf_arch} "
                     "(convertible)")

    checks.append(_guard("architecture", base_check))

    # --- chat format ---------------------------------------------------------------------------------------------
    chat_name = recipe.chat_format

    def format_check() -> Check:
        if chat_name in ("auto", "", None):
            if base_dir is None:
                return Check("chat format", True, "auto: detected from the tokenizer when training starts")
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=recipe.trust_remote_code)
            det = formats.detect(tok)
            if det.format is None:
                raise ForgeError(f"chat_format: auto: {det.reason}",
                                 f"set chat_format to one of {', '.join(formats.names())}")
            fmt = det.format
        else:
            fmt = formats.load(chat_name)
        if not formats.is_proven(fmt):
            raise ForgeError(f"chat_format {fmt.name}: its template pair is not the proven one (hash "
                             f"{fmt.template_hash()[:12]} vs shipped {str(fmt.proven_hash)[:12]})",
                             "use a registry format whose Jinja/Ollama pair passed the parity test, or prove this "
                             "one (tests/test_parity_formats.py) and record its proven_hash")
        return Check("chat format", True, f"{fmt.name}: proven template pair (hash {fmt.template_hash()[:12]})")

    checks.append(_guard("chat format", format_check))

    # --- end of turn in the labels --------------------------------------------------------------------------------
    def eot_check() -> Check:
        if base_dir is None:
            return Check("end of turn", True, "checked on the tokenized data when training starts (base not local)")
        from .train.sft import prepare

        prep = prepare(recipe)
        n = len(prep.train.examples)
        return Check("end of turn", True, f"{', '.join(prep.chat.end_tokens)} in the labels of all {n} training "
                     "examples")

    checks.append(_guard("end of turn", eot_check))

    # --- Ollama name ---------------------------------------------------------------------------------------------
    def name_check() -> Check:
        from .ollama_names import problem, suggest
        from .pipeline import default_model_name

        name, src = default_model_name(recipe, run_dir)
        why = problem(name)
        if why:
            raise ForgeError(f"ollama.model {name!r}: {why}", f"e.g. {suggest(name)!r}")
        return Check("Ollama name", True, f"{name} ({src})")

    checks.append(_guard("Ollama name", name_check))

    # --- disk and RAM ----------------------------------------------------------------------------------------------
    if config is not None:
        if base_dir is not None:
            n_params, base_bytes = safetensors_params(base_dir)
        else:
            n_params, base_bytes = config_params(config), 0
        if not n_params:
            n_params = config_params(config)
        checks.extend(_resources(recipe, config, n_params, base_bytes, base_dir is None, run_dir, est))
    return Plan(recipe_path, run_dir, checks, est)


def _hub_config(repo: str, revision: str | None) -> tuple[dict[str, Any], str] | None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover
        return None
    for local_only in (True, False):
        try:
            path = hf_hub_download(repo, "config.json", revision=revision, local_files_only=local_only)
            return json.loads(Path(path).read_text(encoding="utf-8")), path
        except Exception:  # noqa: BLE001 - offline, gated, missing: reported as one problem by the caller
            continue
    return None


def _resources(recipe, config: dict[str, Any], n: int, base_bytes: int, download: bool, run_dir: Path,
               est: dict[str, Any]) -> list[Check]:
    c = {**config, **(config.get("text_config") or {})}
    h = int(c.get("hidden_size") or 0)
    layers = int(c.get("num_hidden_layers") or 0)
    inter = int(c.get("intermediate_size") or 4 * h)
    vocab = int(c.get("vocab_size") or 0)
    t, x = recipe.train, recipe.export
    # LoRA on all linear layers: r x (in + out) per matrix, 4 attention + 3 MLP matrices per layer, fp32.
    adapter = 4 * t.rank * layers * (4 * 2 * h + 3 * (h + inter))
    ckpt = 2 * 3 * adapter  # two checkpoints kept, each adapter + Adam's two moments
    outtype_b = BITS_PER_WEIGHT[x.outtype] / 8
    copies = 2 if recipe.eval.compare_base else 1
    f16 = n * outtype_b * copies
    quants = sum(n * BITS_PER_WEIGHT.get(q.upper(), 8.5) / 8 for q in x.quant_types) * copies
    merged = n * 2 if "merged" in x.keep else 0
    parts = {"adapter": adapter, "checkpoints": ckpt, "merged": merged, "F16 GGUF": f16, "quantized": quants}
    if download:
        parts["base download (HF cache)"] = n * 2
    need = sum(parts.values()) * HEADROOM
    free = _free_disk(run_dir)
    est["disk"] = {"need": int(need), "free": free, "parts": {k: int(v) for k, v in parts.items()}}
    shown = ", ".join(f"{k} {human(v)}" for k, v in parts.items() if v)
    disk = Check("disk", need <= free, f"needs ~{human(need)} at peak under {run_dir} ({shown}); "
                 f"{human(free)} free", "free some space, choose another run_dir, or drop kept intermediates "
                 "(export.keep)")
    out = [disk]
    if "merged" not in x.keep:  # the gate merges again into a temporary folder
        import tempfile

        tmp_need = n * 2 * HEADROOM
        tmp_free = _free_disk(Path(tempfile.gettempdir()))
        est["tmp"] = {"need": int(tmp_need), "free": tmp_free}
        out.append(Check("temp disk", tmp_need <= tmp_free, f"the fidelity gate merges the adapter again into "
                         f"{tempfile.gettempdir()}: ~{human(tmp_need)}; {human(tmp_free)} free",
                         "set TMPDIR to a roomier folder, or keep the merged model (export.keep: [merged])"))
    # RAM: training keeps the weights (4-bit for QLoRA, else 2 bytes, 4 on CPU where fp32 is used) plus activations
    # (batch x length x width x layers x ~34 bytes for a transformer block without checkpointing) plus the logits
    # (batch x length x vocab x 4 bytes, twice for the loss).
    weight_b = 0.55 if t.method == "qlora" else 2
    act = t.batch_size * t.max_length * h * layers * 34 + t.batch_size * t.max_length * vocab * 8
    train_ram = n * weight_b + act
    gate_ram = n * 4 * 2  # the gate holds the adapter-on model and the merged one in fp32
    need_ram = max(train_ram, gate_ram) * HEADROOM
    free_ram = _free_ram()
    est["ram"] = {"need": int(need_ram), "free": free_ram, "train": int(train_ram), "gate": int(gate_ram)}
    if free_ram is None:
        out.append(Check("RAM", True, f"needs ~{human(need_ram)}; available memory unknown on this system"))
    else:
        out.append(Check("RAM", need_ram <= free_ram, f"needs ~{human(need_ram)} (training {human(train_ram)}, "
                         f"gate {human(gate_ram)}); {human(free_ram)} available",
                         "lower train.batch_size or train.max_length, use method: qlora, or a smaller base"))
    est["parameters"] = n
    return out


__all__ = ["make_plan", "Plan", "Check", "safetensors_params", "config_params"]
