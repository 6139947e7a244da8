"""A PEFT LoRA adapter as a GGUF adapter that llama.cpp (``--lora``) and Ollama (``ADAPTER``) load on its base.

Same tensor names and transforms as the model converter (archs.py): a row transform of a weight W (llama's Q/K
permutation, Gemma's folded attention scale) is linear in W, so applied to B it gives the transform of B @ A.
llama.cpp scales each pair by alpha / rank (rank = rows of lora_a); when every module's PEFT scale is alpha / r
with one alpha, that alpha is written as is. Otherwise (rsLoRA, rank/alpha patterns) each scale is folded into its
lora_b and alpha is written as 0, which llama.cpp reads as "scale 1".
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from ollama_forge.atomic import atomic_path
from ollama_forge.errors import ForgeError
from ollama_forge.events import Sink, choice, emit
from ollama_forge.gguf import archs


@dataclasses.dataclass
class AdapterReport:
    output: Path
    pairs: int
    alpha: float
    folded_scale: bool
    seconds: float
    bytes_out: int


def export_adapter(adapter_dir: str | os.PathLike, base_dir: str | os.PathLike, output: str | os.PathLike, *,
                   outtype: str = "f32", sink: Sink | None = None) -> AdapterReport:
    import gguf
    import numpy as np

    from ollama_forge.gguf.convert import TRANSFORMS, Ctx, load_config
    from ollama_forge.merge import adapter_meta, load_adapter

    t0 = time.time()
    adapter_dir, base_dir, output = Path(adapter_dir), Path(base_dir), Path(output)
    meta = adapter_meta(adapter_dir)
    if meta.get("merged_export_only"):
        raise ForgeError(f"{adapter_dir}: this run changed the tokenizer (tokens added or reserved tokens taken for "
                         "its chat format), so the adapter does not fit the original base GGUF",
                         "export the merged model instead: forge export RUN_DIR")
    adapter = load_adapter(adapter_dir)
    if adapter.replace:
        names = ", ".join(sorted(adapter.replace)[:3])
        raise ForgeError(f"{adapter_dir}: the adapter carries full tensors ({names}): its vocabulary grew or modules "
                         "were trained in full, which a LoRA adapter file cannot carry",
                         "export the merged model instead: forge export RUN_DIR")
    if outtype not in ("f32", "f16"):
        raise ForgeError(f"--outtype {outtype}: adapters are written as f32 or f16", "use f32 (default) or f16")
    hf_config = archs.flat_config(load_config(base_dir))
    arch = archs.lookup(hf_config, str(base_dir / "config.json"))
    archs.run_checks(arch, hf_config)
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, int(hf_config["num_hidden_layers"]))
    ctx = Ctx(hf_config, arch)

    effective = {m: scale * int(a.shape[0]) for m, (a, b, scale, kind) in adapter.lora.items()}
    alphas = set(round(v, 6) for v in effective.values())
    fold = len(alphas) != 1
    alpha = 0.0 if fold else float(next(iter(effective.values())))
    if fold:
        choice("adapter_alpha", 0, "modules have different scales (rsLoRA or rank/alpha patterns); each scale is "
               "folded into its lora_b and alpha 0 tells llama.cpp to apply them as they are", sink, "export-adapter")
    dtype = np.float32 if outtype == "f32" else np.float16
    tensors: list[tuple[str, Any]] = []
    for module, (a, b, scale, kind) in sorted(adapter.lora.items()):
        hf_name = f"{module}.weight"
        if kind != "linear":
            raise ForgeError(f"{adapter_dir}: {module}: {kind} LoRA layers are not exported to GGUF adapters",
                             "export the merged model instead: forge export RUN_DIR")
        ops = archs.rules_for(arch, hf_name)
        if "drop" in ops:
            raise ForgeError(f"{adapter_dir}: the adapter changes {module}, which llama.cpp's {arch.gguf_arch} does "
                             "not have (tied to the embedding)", "retrain without it in target_modules")
        new = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ForgeError(f"{adapter_dir}: {module} has no {arch.gguf_arch} GGUF name",
                             "is this adapter for this base model?")
        bb = b.float().numpy()
        if fold:
            bb = bb * scale
        for op in ops:
            bb = TRANSFORMS[op](bb, ctx)
        tensors.append((f"{new}.lora_a", a.float().numpy().astype(dtype)))
        tensors.append((f"{new}.lora_b", np.ascontiguousarray(bb).astype(dtype)))
    with atomic_path(output) as tmp:
        w = gguf.GGUFWriter(tmp, arch.gguf_arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name(adapter_dir.resolve().name)
        for i, (name, arr) in enumerate(tensors):
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        emit(sink, "progress", "export-adapter", str(output), done=len(tensors), total=len(tensors))
    return AdapterReport(output, len(tensors) // 2, alpha, fold, time.time() - t0, output.stat().st_size)
