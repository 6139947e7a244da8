"""The architecture table: one row per supported HF architecture (GGUF arch, hyper-parameter keys, tensor transforms).

Pure data plus small pure functions over ``config.json`` (no numpy, no gguf): ``convert`` reads a row and does the
work. Keys follow llama.cpp (../shared/reference/gguf-conversion.md §6); the transforms are named here and
implemented in ``convert.TRANSFORMS``:

- ``permute_q`` / ``permute_k``: llama's Q/K rows from HF's rotate-half RoPE layout to llama.cpp's interleaved pairs
  (heads, 2, head_dim/2) -> (heads, head_dim/2, 2). Qwen/Gemma/Phi use NEOX RoPE in llama.cpp: no permutation.
- ``norm_plus_one``: Gemma stores RMSNorm weights as w-1 and multiplies by (1+w); llama.cpp multiplies by w.
- ``attn_scale_fold``: Gemma's attention scale is query_pre_attn_scalar**-0.5 in transformers but a fixed
  1/sqrt(head_dim) in llama.cpp; when they differ, the ratio multiplies the queries (q_proj for Gemma 2, the
  q-norm weight for Gemma 3). Exact: RoPE is linear, and the scale acts after the q-norm.
- ``drop``: tensors llama.cpp never reads (Gemma's lm_head is always tied).
- extra tensors: ``rope_freqs_llama3`` (Llama-3.1 rope scaling), ``rope_factors_longrope`` (Phi-3 long/short).
Phi-3's fused ``qkv_proj`` -> ``attn_qkv`` and ``gate_up_proj`` -> ``ffn_up`` need only the name map.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

from ollama_forge.errors import ForgeError

Config = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# config access


def flat_config(config: Config) -> Config:
    """config.json with a nested ``text_config`` lifted to the top (multimodal wrappers keep the LM there)."""
    if isinstance(config.get("text_config"), dict):
        return {**config, **config["text_config"]}
    return config


def first(config: Config, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


def rope(config: Config) -> dict[str, Any]:
    """RoPE settings of the full-attention layers, whether transformers 5 (``rope_parameters``, maybe split per
    layer type) or 4.x (``rope_theta`` + ``rope_scaling``) wrote the config. ``theta_swa`` is the sliding layers'."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    full = params.get("full_attention", params) if isinstance(params, dict) else {}
    sliding = params.get("sliding_attention", {}) if isinstance(params, dict) else {}
    out = dict(full)
    if out.get("rope_type") is None and out.get("type") is not None:
        out["rope_type"] = out["type"]
    out.setdefault("rope_theta", first(config, "rope_theta", "rotary_emb_base"))
    out.setdefault("partial_rotary_factor", config.get("partial_rotary_factor"))
    if (out.get("rope_type") or "").lower() in ("llama3", "yarn", "longrope", "su"):
        # transformers (standardize_rope_params): a top-level original_max_position_embeddings (Phi-3 keeps it
        # there) wins over the one in rope_parameters; without either, max_position_embeddings.
        if config.get("original_max_position_embeddings") is not None:
            out["original_max_position_embeddings"] = config["original_max_position_embeddings"]
        elif out.get("original_max_position_embeddings") is None:
            out["original_max_position_embeddings"] = config.get("max_position_embeddings")
    else:
        out.setdefault("original_max_position_embeddings", config.get("original_max_position_embeddings"))
    out["theta_swa"] = sliding.get("rope_theta", first(config, "rope_local_base_freq", "local_rope_theta"))
    return out


def head_dim(config: Config) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def n_kv_heads(config: Config) -> int:
    return int(first(config, "num_key_value_heads", default=config["num_attention_heads"]))


def _layer_is_sliding(config: Config, default_period: int) -> list[bool]:
    """Per layer: does it use sliding-window attention? ``layer_types`` when the config lists it; else the
    pattern transformers uses: every ``sliding_window_pattern``-th layer (1-based) is global."""
    n = int(config["num_hidden_layers"])
    if isinstance(config.get("layer_types"), list) and len(config["layer_types"]) == n:
        return [t == "sliding_attention" for t in config["layer_types"]]
    period = int(config.get("sliding_window_pattern") or default_period)
    return [bool((i + 1) % period) for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# hyper-parameters


@dataclasses.dataclass(frozen=True)
class HParam:
    """One GGUF metadata key, computed from config.json."""

    key: str  # GGUF key; "{arch}" is replaced by the row's GGUF architecture
    value: Callable[[Config], Any]  # None -> the model has no such setting: the key is not written
    kind: str  # "u32" | "f32" | "str" | "bool_array"
    required: bool = False  # None from value() is then an error naming the key and the config fields tried
    sources: str = ""  # config fields it comes from, for that error


def cfg(key: str, kind: str, *fields: str, required: bool = False, default: Any = None) -> HParam:
    return HParam(key, lambda c: first(c, *fields, default=default), kind, required, " or ".join(fields))


def derived(key: str, kind: str, fn: Callable[[Config], Any], sources: str, required: bool = False) -> HParam:
    return HParam(key, fn, kind, required, sources)


def _rope_scaling_type(c: Config) -> str | None:
    t = (rope(c).get("rope_type") or "").lower()
    # llama3 is done by the rope_freqs tensor, longrope by factor tensors; llama.cpp's own "none" is the default.
    return {"linear": "linear", "yarn": "yarn", "longrope": "longrope", "su": "longrope"}.get(t)


def _rope_factor(c: Config) -> float | None:
    r = rope(c)
    return r.get("factor") if _rope_scaling_type(c) in ("linear", "yarn") else None


def _rope_orig_ctx(c: Config) -> int | None:
    return rope(c).get("original_max_position_embeddings") if _rope_scaling_type(c) == "yarn" else None


def _yarn(field: str) -> Callable[[Config], Any]:
    return lambda c: rope(c).get(field) if _rope_scaling_type(c) == "yarn" else None


COMMON: tuple[HParam, ...] = (
    cfg("{arch}.block_count", "u32", "num_hidden_layers", "n_layer", required=True),
    cfg("{arch}.context_length", "u32", "max_position_embeddings", "n_positions", "max_sequence_length",
        required=True),
    cfg("{arch}.embedding_length", "u32", "hidden_size", "n_embd", required=True),
    cfg("{arch}.feed_forward_length", "u32", "intermediate_size", "n_inner", required=True),
    cfg("{arch}.attention.head_count", "u32", "num_attention_heads", "n_head", required=True),
    derived("{arch}.attention.head_count_kv", "u32", n_kv_heads, "num_key_value_heads", required=True),
    cfg("{arch}.attention.layer_norm_rms_epsilon", "f32", "rms_norm_eps", "norm_eps", required=True),
    derived("{arch}.rope.freq_base", "f32", lambda c: rope(c).get("rope_theta"), "rope_theta / rope_parameters"),
    derived("{arch}.rope.scaling.type", "str", _rope_scaling_type, "rope_parameters.rope_type"),
    derived("{arch}.rope.scaling.factor", "f32", _rope_factor, "rope_parameters.factor"),
    derived("{arch}.rope.scaling.original_context_length", "u32", _rope_orig_ctx,
            "rope_parameters.original_max_position_embeddings"),
    derived("{arch}.rope.scaling.yarn_ext_factor", "f32", _yarn("extrapolation_factor"), "rope_parameters"),
    derived("{arch}.rope.scaling.yarn_attn_factor", "f32",
            lambda c: _yarn("attention_factor")(c) or _yarn("attn_factor")(c), "rope_parameters"),
    derived("{arch}.rope.scaling.yarn_beta_fast", "f32", _yarn("beta_fast"), "rope_parameters"),
    derived("{arch}.rope.scaling.yarn_beta_slow", "f32", _yarn("beta_slow"), "rope_parameters"),
)

HEAD_DIMS: tuple[HParam, ...] = (
    cfg("{arch}.attention.key_length", "u32", "head_dim"),
    cfg("{arch}.attention.value_length", "u32", "head_dim"),
)


def _phi3_rope_dims(c: Config) -> int:
    pct = rope(c).get("partial_rotary_factor") or 1.0
    return int(pct * c["hidden_size"]) // c["num_attention_heads"]


def _phi3_attn_factor(c: Config) -> float | None:
    r = rope(c)
    if _rope_scaling_type(c) != "longrope" or not r.get("long_factor"):
        return None
    if r.get("attention_factor") is not None:
        return float(r["attention_factor"])
    orig = r.get("original_max_position_embeddings") or c["max_position_embeddings"]
    # transformers' longrope attention factor: sqrt(1 + ln f / ln orig), f = factor or max/original context.
    factor = r.get("factor") or c["max_position_embeddings"] / orig
    return math.sqrt(1 + math.log(factor) / math.log(orig)) if factor > 1.0 else 1.0


def _swa_pattern(period: int) -> Callable[[Config], list[bool] | None]:
    def value(c: Config) -> list[bool] | None:
        if not c.get("sliding_window"):
            return None
        return _layer_is_sliding(c, period)
    return value


# ---------------------------------------------------------------------------------------------------------------
# tensor rules


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """Apply transform ``op`` to every HF tensor whose name matches ``pattern`` (re.search), in table order."""

    pattern: str
    op: str  # a key of convert.TRANSFORMS, or "drop"


@dataclasses.dataclass(frozen=True)
class Arch:
    """One supported architecture."""

    name: str  # what we call it in messages ("mistral" shares the llama GGUF arch)
    hf_architectures: tuple[str, ...]  # config.json "architectures"[0] values it covers
    gguf_arch: str  # general.architecture, and gguf.MODEL_ARCH_NAMES value for the tensor name map
    hparams: tuple[HParam, ...]
    tensor_rules: tuple[TensorRule, ...] = ()
    extra_tensors: tuple[str, ...] = ()  # generators in convert.EXTRA_TENSORS
    # Checks on config.json before anything is written: each returns an error message or None.
    checks: tuple[Callable[[Config], str | None], ...] = ()
    notes: str = ""


def _llama_rope_ok(c: Config) -> str | None:
    t = (rope(c).get("rope_type") or "default").lower()
    if t not in ("default", "linear", "yarn", "llama3", "dynamic"):
        return f"config.json: rope type {t!r} is not supported for this architecture (default, linear, yarn, llama3)"
    if t == "dynamic":
        return "config.json: rope type 'dynamic' (NTK) has no llama.cpp equivalent"
    return None


def _head_dim_splits(c: Config) -> str | None:
    if head_dim(c) % 2:
        return f"config.json: head_dim {head_dim(c)} is odd; RoPE needs an even head size"
    return None


def _gemma2_softcaps(c: Config) -> str | None:
    missing = [k for k in ("attn_logit_softcapping", "final_logit_softcapping") if c.get(k) is None]
    if missing:
        return (f"config.json: {' and '.join(missing)} is null, but llama.cpp's gemma2 always soft-caps "
                "(defaults 50 and 30), so its logits would differ from transformers'")
    return None


def _phi3_longrope_factors(c: Config) -> str | None:
    if _rope_scaling_type(c) == "longrope":
        r = rope(c)
        half = _phi3_rope_dims(c) // 2
        for k in ("long_factor", "short_factor"):
            if not isinstance(r.get(k), list) or len(r[k]) != half:
                return f"config.json: rope_parameters.{k} must list {half} factors (rotary dims / 2)"
    return None


ARCHS: tuple[Arch, ...] = (
    Arch(
        name="llama",
        hf_architectures=("LlamaForCausalLM",),
        gguf_arch="llama",
        hparams=COMMON + HEAD_DIMS + (
            cfg("{arch}.vocab_size", "u32", "vocab_size", required=True),
            derived("{arch}.rope.dimension_count", "u32", head_dim, "head_dim or hidden_size/num_attention_heads"),
        ),
        tensor_rules=(TensorRule(r"q_proj\.(weight|bias)$", "permute_q"),
                      TensorRule(r"k_proj\.(weight|bias)$", "permute_k")),
        extra_tensors=("rope_freqs_llama3",),
        checks=(_llama_rope_ok, _head_dim_splits),
        notes="Q/K permuted to llama.cpp's interleaved RoPE; llama3 rope scaling -> rope_freqs tensor",
    ),
    Arch(
        name="mistral",
        hf_architectures=("MistralForCausalLM",),
        gguf_arch="llama",  # llama.cpp runs Mistral 7B as llama (convert_hf_to_gguf: MistralForCausalLM = LlamaModel)
        hparams=COMMON + HEAD_DIMS + (
            cfg("{arch}.vocab_size", "u32", "vocab_size", required=True),
            derived("{arch}.rope.dimension_count", "u32", head_dim, "head_dim or hidden_size/num_attention_heads"),
        ),
        tensor_rules=(TensorRule(r"q_proj\.(weight|bias)$", "permute_q"),
                      TensorRule(r"k_proj\.(weight|bias)$", "permute_k")),
        checks=(_llama_rope_ok, _head_dim_splits),
        notes="llama GGUF architecture; llama.cpp has no sliding window for it",
    ),
    Arch(
        name="qwen2",
        hf_architectures=("Qwen2ForCausalLM",),
        gguf_arch="qwen2",
        hparams=COMMON,
        notes="NEOX RoPE (no permutation); q/k/v biases kept as F32",
    ),
    Arch(
        name="qwen3",
        hf_architectures=("Qwen3ForCausalLM",),
        gguf_arch="qwen3",
        hparams=COMMON + HEAD_DIMS,
        notes="per-head q/k RMSNorm; head_dim may differ from hidden/heads",
    ),
    Arch(
        name="gemma2",
        hf_architectures=("Gemma2ForCausalLM",),
        gguf_arch="gemma2",
        hparams=COMMON + HEAD_DIMS + (
            cfg("{arch}.attn_logit_softcapping", "f32", "attn_logit_softcapping"),
            cfg("{arch}.final_logit_softcapping", "f32", "final_logit_softcapping"),
            cfg("{arch}.attention.sliding_window", "u32", "sliding_window"),
            derived("{arch}.attention.sliding_window_pattern", "bool_array", _swa_pattern(2),
                    "layer_types or sliding_window_pattern"),
            derived("{arch}.rope.freq_base_swa", "f32", lambda c: rope(c).get("theta_swa"),
                    "rope_parameters.sliding_attention"),
        ),
        tensor_rules=(TensorRule(r"^lm_head\.weight$", "drop"),
                      TensorRule(r"norm\.weight$", "norm_plus_one"),
                      TensorRule(r"q_proj\.(weight|bias)$", "attn_scale_fold")),
        checks=(_gemma2_softcaps,),
        notes="norms +1, lm_head dropped (tied), softcapping, per-layer sliding window",
    ),
    Arch(
        name="gemma3",
        hf_architectures=("Gemma3ForCausalLM",),
        gguf_arch="gemma3",
        hparams=COMMON + HEAD_DIMS + (
            cfg("{arch}.final_logit_softcapping", "f32", "final_logit_softcapping"),
            cfg("{arch}.attention.sliding_window", "u32", "sliding_window"),
            derived("{arch}.attention.sliding_window_pattern", "bool_array", _swa_pattern(6),
                    "layer_types or sliding_window_pattern"),
            derived("{arch}.rope.freq_base_swa", "f32", lambda c: rope(c).get("theta_swa"),
                    "rope_parameters.sliding_attention"),
        ),
        tensor_rules=(TensorRule(r"^lm_head\.weight$", "drop"),
                      TensorRule(r"norm\.weight$", "norm_plus_one"),
                      TensorRule(r"q_norm\.weight$", "attn_scale_fold")),
        checks=(lambda c: "config.json: gemma3 with attn_logit_softcapping is not supported by llama.cpp"
                if c.get("attn_logit_softcapping") else None,),
        notes="text model only; norms +1, q/k norms, local/global rope bases",
    ),
    Arch(
        name="phi3",
        hf_architectures=("Phi3ForCausalLM",),
        gguf_arch="phi3",
        hparams=COMMON + (
            derived("{arch}.rope.dimension_count", "u32", _phi3_rope_dims, "partial_rotary_factor"),
            # Always written, as llama.cpp's converter does; transformers' default without one: the context length.
            derived("{arch}.rope.scaling.original_context_length", "u32",
                    lambda c: rope(c).get("original_max_position_embeddings") or c["max_position_embeddings"],
                    "original_max_position_embeddings"),
            derived("{arch}.rope.scaling.attn_factor", "f32", _phi3_attn_factor, "rope_parameters"),
            # llama.cpp's converter writes 0 when absent (marks Phi-3 without SWA); llama.cpp ignores Phi SWA.
            cfg("{arch}.attention.sliding_window", "u32", "sliding_window", default=0),
        ),
        extra_tensors=("rope_factors_longrope",),
        checks=(_phi3_longrope_factors,),
        notes="fused qkv and gate_up kept fused; longrope factor tensors",
    ),
)

BY_HF_ARCH: dict[str, Arch] = {hf: a for a in ARCHS for hf in a.hf_architectures}

# Architectures people bring that we name in the error, so the message says what to do instead.
KNOWN_UNSUPPORTED = {
    "Gemma3ForConditionalGeneration": "the multimodal Gemma 3 checkpoint; convert the text model (Gemma3ForCausalLM)",
    "MixtralForCausalLM": "mixture-of-experts is not supported",
    "Qwen2MoeForCausalLM": "mixture-of-experts is not supported",
    "Qwen3MoeForCausalLM": "mixture-of-experts is not supported",
}


def supported_summary() -> str:
    return ", ".join(f"{a.name} ({'/'.join(a.hf_architectures)})" for a in ARCHS)


def lookup(config: Config, where: str = "config.json") -> Arch:
    """The table row for this config, or a one-line error listing what is supported."""
    archs = config.get("architectures") or []
    hf = archs[0] if archs else None
    if hf is None:
        raise ForgeError(f"{where}: no 'architectures' entry, so the model architecture is unknown",
                         f"supported: {supported_summary()}")
    row = BY_HF_ARCH.get(hf)
    if row is None:
        why = KNOWN_UNSUPPORTED.get(hf, "")
        raise ForgeError(f"{where}: architecture {hf} is not supported{' (' + why + ')' if why else ''}",
                         f"supported: {supported_summary()}")
    return row


def resolve_hparams(arch: Arch, config: Config, where: str = "config.json") -> list[tuple[str, str, Any]]:
    """(key, kind, value) for every hyper-parameter this model has; a missing required one is a ForgeError."""
    out = []
    for hp in arch.hparams:
        key = hp.key.format(arch=arch.gguf_arch)
        try:
            value = hp.value(config)
        except (KeyError, TypeError, ZeroDivisionError) as e:
            raise ForgeError(f"{where}: cannot compute {key} from {hp.sources}: {type(e).__name__} {e}",
                             "check the config against the model's architecture") from None
        if value is None:
            if hp.required:
                raise ForgeError(f"{where}: missing {hp.sources} (needed for {key})",
                                 "is this a complete Hugging Face config.json?")
            continue
        out.append((key, hp.kind, value))
    return out


def run_checks(arch: Arch, config: Config) -> None:
    for check in arch.checks:
        msg = check(config)
        if msg:
            raise ForgeError(msg, f"the {arch.name} row of ollama_forge/gguf/archs.py lists what is supported")


def rules_for(arch: Arch, hf_name: str) -> list[str]:
    return [r.op for r in arch.tensor_rules if re.search(r.pattern, hf_name)]


def attention_scale_fold(arch: Arch, config: Config) -> float:
    """Factor to multiply the queries by so llama.cpp's fixed attention scale gives transformers' scores.

    transformers (Gemma 2/3): scores = q.k * query_pre_attn_scalar**-0.5. llama.cpp: q.k / sqrt(head_dim), except
    the 27B shapes (46 / 62 layers), where it uses 1/sqrt(hidden/heads) (llama-model gemma2.cpp/gemma3.cpp).
    """
    qpas = config.get("query_pre_attn_scalar")
    if qpas is None:
        return 1.0
    n_layer = int(config["num_hidden_layers"])
    big = {"gemma2": 46, "gemma3": 62}.get(arch.gguf_arch)
    llama_cpp_denominator = (config["hidden_size"] / config["num_attention_heads"]) if n_layer == big \
        else head_dim(config)
    return math.sqrt(llama_cpp_denominator / float(qpas))
