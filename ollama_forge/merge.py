"""Merge a LoRA adapter into its full-precision base, streaming: W' = W + scale * B @ A, tensor by tensor.

Never the whole model in memory: base tensors are read one at a time from the safetensors shards (plain reads, no
mmap, so pages read do not stay in this process), merged in float32 and rounded once to the output dtype (PEFT's
bf16 merge rounds twice: B @ A in bf16, then the sum), and appended to the output shards as they are produced.

Scaling follows PEFT: alpha / r, or alpha / sqrt(r) with rsLoRA; ``rank_pattern`` / ``alpha_pattern`` override per
module. Adapter kinds whose merge we do not reproduce exactly (DoRA, LoRA biases, trainable-token deltas, a LoRA
on a tied lm_head) are refused with the reason, never approximated. An adapter trained with QLoRA is merged into
the full-precision base (never into 4-bit weights), and the log says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from .atomic import atomic_path
from .errors import ForgeError
from .events import Sink, choice, emit

log = logging.getLogger("ollama_forge.merge")

PEFT_PREFIX = "base_model.model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt")
MODEL_SIDE_FILES = ("config.json", "generation_config.json", "LICENSE", "LICENSE.txt", "NOTICE", "README.md")


@dataclasses.dataclass
class LoraAdapter:
    path: Path
    config: dict[str, Any]
    # module name (as in the base checkpoint, without ".weight") -> (A, B, scale, kind); kind "linear" | "embedding"
    lora: dict[str, tuple[Any, Any, float, str]]
    # base tensor name -> full replacement tensor (PEFT modules_to_save, e.g. grown embeddings)
    replace: dict[str, Any]

    @property
    def r(self) -> int:
        return int(self.config["r"])


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT matches a pattern key against the module name as a suffix on a "." boundary (regex allowed).
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{key})", module):
            return value
    return default


def load_adapter(path: str | os.PathLike) -> LoraAdapter:
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise ForgeError(f"{path}: no adapter_config.json", "pass the directory PEFT's save_pretrained wrote "
                         "(a run's adapter/ folder)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    kind = cfg.get("peft_type", "LORA")
    if kind != "LORA":
        raise ForgeError(f"{cfg_path}: peft_type {kind} cannot be merged", "forge merges LoRA adapters only")
    refusals = [
        (cfg.get("use_dora"), "use_dora: DoRA rescales each column by a learned magnitude; forge does not merge it",
         "merge with PEFT's merge_and_unload, or train without DoRA"),
        (cfg.get("bias", "none") != "none" or cfg.get("lora_bias"), "LoRA bias terms are not merged by forge",
         "train with bias: none"),
        (cfg.get("trainable_token_indices"), "trainable_token_indices (token deltas) are not merged by forge",
         "train new token rows through modules_to_save instead"),
    ]
    for bad, why, hint in refusals:
        if bad:
            raise ForgeError(f"{cfg_path}: {why}", hint)
    st = path / "adapter_model.safetensors"
    if not st.is_file():
        raise ForgeError(f"{path}: no adapter_model.safetensors", "save the adapter with safe_serialization")
    tensors = load_file(str(st))  # small: rank-r factors only
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    pairs: dict[str, dict[str, Any]] = {}
    replace: dict[str, Any] = {}
    for key, t in tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?", name)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = t
        elif ".lora_magnitude_vector" in name or "trainable_tokens" in name:
            raise ForgeError(f"{st}: {key}: adapter kind not merged by forge", "use a plain LoRA adapter")
        else:
            replace[name.replace(".modules_to_save.default", "").replace(".modules_to_save", "")] = t
    lora = {}
    for module, parts in pairs.items():
        rr = int(_pattern_value(rank_pattern, module, r))
        aa = float(_pattern_value(alpha_pattern, module, alpha))
        scale = aa / math.sqrt(rr) if cfg.get("use_rslora") else aa / rr
        if "lora_A" in parts and "lora_B" in parts:
            a, b = parts["lora_A"], parts["lora_B"]
            lora[module] = (a, b, scale, "conv1d" if fan_in_fan_out else "linear")
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            lora[module] = (parts["lora_embedding_A"], parts["lora_embedding_B"], scale, "embedding")
        else:
            raise ForgeError(f"{st}: {module}: has {sorted(parts)} but not both LoRA factors", "re-save the adapter")
    return LoraAdapter(path, cfg, lora, replace)


def delta_for(adapter: LoraAdapter, module: str):
    """scale * B @ A in float32, shaped like the base weight."""
    a, b, scale, kind = adapter.lora[module]
    d = (b.float() @ a.float()) * scale
    return d.T if kind in ("embedding", "conv1d") else d


@dataclasses.dataclass
class MergeReport:
    output: Path
    merged_modules: int
    replaced_tensors: int
    tensors: int
    bytes_out: int
    seconds: float
    out_dtype: str
    quantized_base: bool


def _read_tensor(t, torch):
    """Read one safetensors tensor with a plain read (not mmap: mapped pages would count against our memory)."""
    dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[t.dtype]
    with open(t.file, "rb") as f:
        f.seek(t.start)
        buf = bytearray(t.end - t.start)
        f.readinto(buf)
    return torch.frombuffer(buf, dtype=dt).reshape(t.shape) if buf else torch.empty(t.shape, dtype=dt)


_ST_TORCH = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def unchanged(t, adapter: LoraAdapter, out_dtype: str | None) -> bool:
    """True when a base tensor passes through the merge untouched (its bytes can be copied as they are)."""
    module = t.name[: -len(".weight")] if t.name.endswith(".weight") else None
    return (t.name not in adapter.replace and (module is None or module not in adapter.lora)
            and (out_dtype is None or out_dtype == _ST_TORCH[t.dtype]))


def merged_tensors(base_dir: Path, adapter: LoraAdapter, out_dtype: str | None = None, *,
                   skip_unchanged: bool = False) -> Iterator[tuple[Any, str, Any]]:
    """Yield (source tensor info, name, merged tensor) for every base tensor, one at a time, in file order.

    With ``skip_unchanged`` the tensor is None for tensors the merge leaves as they are (the caller copies bytes).
    """
    import torch

    from .gguf.convert import index_safetensors

    for t in index_safetensors(base_dir):
        name = t.name
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if skip_unchanged and unchanged(t, adapter, out_dtype):
            yield t, name, None
            continue
        if name in adapter.replace:
            w = adapter.replace[name]
        else:
            w = _read_tensor(t, torch)
            if module is not None and module in adapter.lora:
                d = delta_for(adapter, module)
                if tuple(d.shape) != tuple(w.shape):
                    raise ForgeError(f"{adapter.path}: {module}: adapter delta {tuple(d.shape)} does not fit base "
                                     f"{tuple(w.shape)}", "merge into the base model the adapter was trained on")
                w = (w.float() + d).to(w.dtype)  # one rounding, in the base's own dtype
        if out_dtype is not None and w.is_floating_point():
            w = w.to(getattr(torch, out_dtype))
        yield t, name, w


def _check_coverage(base_dir: Path, adapter: LoraAdapter, config: dict[str, Any]) -> None:
    from .gguf.convert import index_safetensors

    names = {t.name for t in index_safetensors(base_dir)}
    missing = [m for m in adapter.lora if f"{m}.weight" not in names]
    tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in names
    if "lm_head" in missing and tied:
        raise ForgeError(f"{adapter.path}: the adapter changes lm_head, which this base ties to embed_tokens",
                         "retrain without lm_head in target_modules (all-linear leaves it out)")
    if missing:
        raise ForgeError(f"{adapter.path}: adapter targets modules the base does not have: {', '.join(missing[:3])}",
                         "merge into the base model the adapter was trained on")
    extra = [n for n in adapter.replace if n not in names and n != "lm_head.weight"]
    if extra:
        raise ForgeError(f"{adapter.path}: adapter saves full tensors the base does not have: {', '.join(extra[:3])}",
                         "merge into the base model the adapter was trained on")


def _fixed_mmap_threshold() -> None:
    """Keep glibc from recycling freed multi-MB tensor buffers into a growing heap.

    glibc raises its mmap threshold after each large free (up to 32 MB), so later tensor-sized allocations come
    from the heap and fragment it: on a 0.5B model peak RSS grew from 335 MB to 440 MB over the layers. A fixed
    1 MiB threshold returns every large buffer to the OS when freed. No-op where glibc is absent.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def merge_adapter(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  out_dtype: str | None = None, quantized_base: bool = False, sink: Sink | None = None) -> MergeReport:
    """Merge ``adapter_dir`` into the HF model at ``base_dir``; write a complete HF model directory at ``out_dir``."""
    from .gguf.convert import index_safetensors
    from .st_writer import StreamingWriter, dtype_name

    t0 = time.time()
    _fixed_mmap_threshold()
    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    cfg_path = base_dir / "config.json"
    if not cfg_path.is_file():
        raise ForgeError(f"{base_dir}: no config.json", "pass the base model's HF directory")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    adapter = load_adapter(adapter_dir)
    _check_coverage(base_dir, adapter, config)
    if quantized_base:
        choice("merge_base", "full-precision", "adapter was trained with QLoRA on 4-bit NF4 weights; merging into "
               "4-bit weights would bake in quantization error, so it is merged into the original weights",
               sink, "merge")
    if out_dtype is not None and out_dtype not in ("float32", "float16", "bfloat16"):
        raise ForgeError(f"--dtype {out_dtype}: unsupported", "use float32, float16 or bfloat16")
    index = index_safetensors(base_dir)
    by_file: dict[Path, list] = {}
    for t in index:
        by_file.setdefault(t.file, []).append(t)
    emb_rows = None
    for name, w in adapter.replace.items():
        if name.endswith("embed_tokens.weight"):
            emb_rows = int(w.shape[0])
    total = len(index)
    done = 0
    bytes_out = 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        weight_map: dict[str, str] = {}
        gen = merged_tensors(base_dir, adapter, out_dtype, skip_unchanged=True)
        for file, tensors in by_file.items():
            plan = []
            for t in tensors:
                shape = tuple(adapter.replace[t.name].shape) if t.name in adapter.replace else t.shape
                dt = dtype_name(adapter.replace[t.name]) if t.name in adapter.replace else _ST_TORCH[t.dtype]
                plan.append((t.name, out_dtype or dt, shape))
            writer = StreamingWriter(tmp / file.name, plan)
            try:
                for _ in tensors:
                    t, name, w = next(gen)
                    if w is None:
                        writer.copy_raw(name, t.file, t.start, t.end)
                    else:
                        writer.write(name, w)
                    weight_map[name] = file.name
                    done += 1
                    emit(sink, "progress", "merge", name, done=done, total=total)
            finally:
                writer.close()
            bytes_out += (tmp / file.name).stat().st_size
        if (base_dir / "model.safetensors.index.json").is_file():
            idx = {"metadata": {"total_size": sum(
                (tmp / f).stat().st_size for f in set(weight_map.values()))}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(idx, indent=2))
        # Model files from the base; tokenizer files from the adapter when training saved them (its chat template
        # and any added tokens are what the model was trained with), else from the base.
        for fname in MODEL_SIDE_FILES:
            if (base_dir / fname).is_file():
                shutil.copy2(base_dir / fname, tmp / fname)
        tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
        choice("tokenizer_source", str(tok_src), "the adapter directory holds the tokenizer used in training"
               if tok_src == adapter_dir else "the adapter has no tokenizer files; using the base's", sink, "merge")
        for fname in TOKENIZER_FILES:
            src = tok_src / fname if (tok_src / fname).is_file() else base_dir / fname
            if src.is_file():
                shutil.copy2(src, tmp / fname)
        new_cfg = json.loads((tmp / "config.json").read_text())
        if out_dtype:
            new_cfg["dtype"] = out_dtype
            new_cfg.pop("torch_dtype", None)
        if emb_rows is not None and new_cfg.get("vocab_size") != emb_rows:
            choice("vocab_size", emb_rows, f"the adapter carries a grown embedding ({emb_rows} rows)", sink, "merge")
            new_cfg["vocab_size"] = emb_rows
        (tmp / "config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
        # The adapter beside the output (a run directory's adapter/ and merged/) is named relative to it, so a run
        # directory moved or copied elsewhere holds the same bytes.
        src = Path(adapter_dir).resolve()
        rel = os.path.relpath(src, Path(out_dir).resolve().parent) if src.parent == Path(out_dir).resolve().parent \
            else str(adapter_dir)
        (tmp / "forge_merge.json").write_text(json.dumps({
            "adapter": rel, "base": str(base_dir), "merged_modules": len(adapter.lora),
            "quantized_base": quantized_base, "scale_rule": "alpha/sqrt(r)" if adapter.config.get("use_rslora")
            else "alpha/r"}, indent=2) + "\n")
    return MergeReport(out_dir, len(adapter.lora), len(adapter.replace), total, bytes_out, time.time() - t0,
                       out_dtype or "as base", quantized_base)


def adapter_meta(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """What training recorded beside the adapter (forge_adapter.json): method, base, chat format, ..."""
    p = Path(adapter_dir) / "forge_adapter.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def resolve_run(run_dir: str | os.PathLike) -> tuple[Path, str, bool]:
    """(adapter dir, base model reference, trained on a 4-bit base?) of a run directory."""
    import yaml

    run = Path(run_dir)
    adapter = run / "adapter"
    rec = run / "recipe.resolved.yaml"
    if not adapter.is_dir():
        raise ForgeError(f"{run}: no adapter/ folder", "train first (forge train), or pass --adapter DIR --base MODEL")
    if not rec.is_file():
        raise ForgeError(f"{run}: no recipe.resolved.yaml", "pass --base MODEL to say which base to merge into")
    data = yaml.safe_load(rec.read_text(encoding="utf-8")) or {}
    method = adapter_meta(adapter).get("method") or (data.get("train") or {}).get("method")
    return adapter, str(data.get("base_model") or ""), method == "qlora"


def local_model_dir(ref: str, revision: str | None = None) -> Path:
    """An HF directory for ``ref``: a local directory as is, a Hub id through the local cache / a download."""
    from .modelref import resolve

    m = resolve(ref)
    if m.kind == "hf_dir":
        return m.path
    if m.kind != "hf_id":
        raise ForgeError(f"{ref}: the base must be a Hugging Face model ({m.kind} given)",
                         "pass the HF directory or id the adapter was trained on")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, revision=revision, allow_patterns=[
            "*.safetensors", "*.json", "*.model", "*.jinja", "*.txt"]))
    except Exception as e:  # offline, gated (401/403), missing
        msg = " ".join(str(e).split())[:160]
        hint = "log in with `hf auth login` and accept the model's licence" if any(
            c in msg for c in ("401", "403", "gated")) else "check the id and your network, or pass a local directory"
        raise ForgeError(f"{ref}: cannot fetch the base model ({msg})", hint) from None


def _overlay(base_dir: Path, adapter_dir: Path, into: Path) -> Path:
    """A model directory that reads the base's weights (symlinked) with the training tokenizer and chat template."""
    into.mkdir(parents=True)
    for f in base_dir.iterdir():
        if f.suffix == ".safetensors" or f.name == "model.safetensors.index.json":
            (into / f.name).symlink_to(f.resolve())
        elif f.name in MODEL_SIDE_FILES and f.is_file():
            shutil.copy2(f, into / f.name)
    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    for fname in TOKENIZER_FILES:
        src = tok_src / fname if (tok_src / fname).is_file() else base_dir / fname
        if src.is_file():
            shutil.copy2(src, into / fname)
    return into


@dataclasses.dataclass
class ExportReport:
    output: Path
    merged_modules: int
    seconds: float
    one_pass: bool
    convert: Any  # gguf.convert.ConvertReport


def export_gguf(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike, output: str | os.PathLike, *,
                outtype: str = "f16", quantized_base: bool = False, sink: Sink | None = None) -> ExportReport:
    """Merge the adapter and convert to GGUF in one streaming pass: merged tensors go straight into the GGUF
    writer, and no merged safetensors copy is written. Adapters that carry full tensors (a grown vocabulary) take
    the two-step path (merge to a temporary directory, convert, delete)."""
    import tempfile

    import torch

    from .gguf.convert import ConvertConfig, convert_hf_to_gguf, index_safetensors

    t0 = time.time()
    _fixed_mmap_threshold()
    adapter_dir, base_dir, output = Path(adapter_dir), Path(base_dir), Path(output)
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8")) if \
        (base_dir / "config.json").is_file() else {}
    adapter = load_adapter(adapter_dir)
    _check_coverage(base_dir, adapter, config)
    if quantized_base:
        choice("merge_base", "full-precision", "adapter was trained with QLoRA on 4-bit NF4 weights; merging into "
               "4-bit weights would bake in quantization error, so it is merged into the original weights",
               sink, "export")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".forge-export-", dir=output.parent) as tmp:
        if adapter.replace:
            choice("export_path", "two-step", f"the adapter carries {len(adapter.replace)} full tensor(s) "
                   "(e.g. a grown vocabulary), which change tensor shapes: merged to a temporary directory first",
                   sink, "export")
            merged = Path(tmp) / "merged"
            merge_adapter(adapter_dir, base_dir, merged, quantized_base=quantized_base, sink=sink)
            rep = convert_hf_to_gguf(merged, output, ConvertConfig(outtype=outtype), sink)
            return ExportReport(output, len(adapter.lora), time.time() - t0, False, rep)
        overlay = _overlay(base_dir, adapter_dir, Path(tmp) / "model")
        by_name = {t.name: t for t in index_safetensors(base_dir)}

        def merged_fn(module: str):
            def fn():
                w = _read_tensor(by_name[f"{module}.weight"], torch)
                return (w.float() + delta_for(adapter, module)).numpy()
            return fn

        override = {f"{m}.weight": merged_fn(m) for m in adapter.lora}
        rep = convert_hf_to_gguf(overlay, output, ConvertConfig(outtype=outtype), sink, tensor_override=override)
    return ExportReport(output, len(adapter.lora), time.time() - t0, True, rep)
