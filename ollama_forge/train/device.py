"""Device, dtype and 4-bit support for training, each chosen with its reason (cuda > mps > cpu).

Everything the choice depends on comes from one ``Probe`` (what torch and bitsandbytes report), so the MPS and
multi-GPU paths this CPU machine cannot run are tested with a hand-made probe.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from ..errors import ForgeError
from ..events import Sink, choice


@dataclasses.dataclass(frozen=True)
class Probe:
    """What the machine offers; ``probe()`` fills it from torch, tests build it by hand."""

    cuda: bool = False
    cuda_name: str = ""
    cuda_bf16: bool = False
    mps: bool = False
    bnb: bool = False  # bitsandbytes importable
    bnb_error: str = ""


def probe() -> Probe:
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    bnb, bnb_error = True, ""
    import logging

    # bitsandbytes 0.50 warns at import on AVX512-BF16 CPUs that an optional CPU kernel package (`kernels`) is
    # missing: a speed-up for 4-bit matmuls on CPU, which forge never trains with; not worth a line in every run.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA setup raising RuntimeError at import
        bnb, bnb_error = False, f"{type(e).__name__}: {e}".splitlines()[0]
    return Probe(cuda=cuda, cuda_name=torch.cuda.get_device_name(0) if cuda else "",
                 cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()), mps=mps, bnb=bnb, bnb_error=bnb_error)


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    device: str  # cuda | mps | cpu
    dtype: str  # bfloat16 | float16 | float32: the dtype of the (non-quantized) base weights
    bf16_amp: bool  # TrainingArguments.bf16 (autocast)
    fp16_amp: bool  # TrainingArguments.fp16 (autocast + grad scaler)
    quantize_4bit: bool  # load the base in 4-bit NF4 (QLoRA)
    gradient_checkpointing: bool
    notes: tuple[str, ...] = ()  # one-line notices shown to the user (e.g. the QLoRA fallback)
    distributed: str = "single"  # single | ddp | fsdp

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def choose_device(requested: str, p: Probe) -> tuple[str, str]:
    if requested not in ("auto", "cuda", "mps", "cpu"):
        raise ForgeError(f"train.device: unknown device {requested!r}", "use auto, cuda, mps or cpu")
    if requested == "cuda" and not p.cuda:
        raise ForgeError("train.device: cuda asked for but torch sees no CUDA device",
                         "install a CUDA build of torch, or set train.device: auto")
    if requested == "mps" and not p.mps:
        raise ForgeError("train.device: mps asked for but torch reports MPS unavailable",
                         "use macOS 12.3+ on Apple silicon with a recent torch, or set train.device: auto")
    if requested != "auto":
        return requested, "set in the recipe"
    if p.cuda:
        return "cuda", f"CUDA device {p.cuda_name or 0} available"
    if p.mps:
        return "mps", "Apple MPS available, no CUDA"
    return "cpu", "no CUDA or MPS device"


def choose_dtype(requested: str, device: str, p: Probe) -> tuple[str, str]:
    if requested not in ("auto", "bfloat16", "float16", "float32"):
        raise ForgeError(f"train.dtype: unknown dtype {requested!r}", "use auto, bfloat16, float16 or float32")
    if requested != "auto":
        if requested == "bfloat16" and device == "cuda" and not p.cuda_bf16:
            raise ForgeError(f"train.dtype: {p.cuda_name or 'this GPU'} does not support bfloat16",
                             "use float16 (or auto)")
        return requested, "set in the recipe"
    if device == "cuda":
        if p.cuda_bf16:
            return "bfloat16", "GPU supports bf16 (no loss scaling needed, half the memory of fp32)"
        return "float16", "GPU lacks bf16 (pre-Ampere): fp16 with loss scaling"
    if device == "mps":
        return "bfloat16", "16-bit halves memory on Apple unified memory; bf16 needs no loss scaling"
    # Measured on this machine kind: bf16 matmuls about 3x slower than fp32 on CPU (stack-notes), and CPU RAM is
    # rarely the limit for the models one trains on a CPU.
    return "float32", "CPU: bf16 matmuls are about 3x slower than fp32 here"


def plan(method: str, requested_device: str = "auto", requested_dtype: str = "auto", *, strict_qlora: bool = False,
         gradient_checkpointing: Optional[bool] = None, p: Probe | None = None, sink: Sink | None = None,
         stage: str = "train", env: Optional[dict] = None) -> DevicePlan:
    """Pick device, dtype, mixed precision, 4-bit and gradient checkpointing; log each choice with its reason."""
    p = probe() if p is None else p
    device, why = choose_device(requested_device, p)
    choice("device", device, why, sink, stage)
    dtype, dwhy = choose_dtype(requested_dtype, device, p)
    notes: list[str] = []
    quant = False
    if method == "qlora":
        ok, reason = four_bit_support(device, p)
        if ok:
            quant = True
            choice("quantization", "nf4", f"QLoRA: 4-bit NF4 base ({reason})", sink, stage)
        elif strict_qlora:
            raise ForgeError(f"train.method: qlora needs 4-bit loading, unavailable here: {reason}",
                             "set train.strict_qlora: false to train 16-bit LoRA instead, or train on CUDA/CPU")
        else:
            if device != "cpu" and dtype == "float32":
                dtype, dwhy = "bfloat16", "QLoRA fallback trains LoRA in 16-bit"
            note = (f"QLoRA: 4-bit is not available on {device} ({reason}); training LoRA on a 16-bit base "
                    f"instead (set train.strict_qlora: true to refuse)")
            notes.append(note)
            choice("method", "lora", note, sink, stage)
    choice("dtype", dtype, dwhy, sink, stage)
    # Mixed precision: with a 16-bit base the LoRA weights stay fp32 (peft upcasts adapters) and autocast runs the
    # matmuls in 16-bit. On MPS autocast support is partial, so the base simply stays 16-bit without autocast.
    bf16_amp = device == "cuda" and (dtype == "bfloat16" or (quant and p.cuda_bf16))
    fp16_amp = device == "cuda" and not bf16_amp and (dtype == "float16" or quant)
    if gradient_checkpointing is None:
        gradient_checkpointing = device == "cuda"
        choice("gradient_checkpointing", gradient_checkpointing,
               "CUDA: activations are the memory limit, recompute them (about 20% slower)" if device == "cuda" else
               f"{device}: off, about 40% slower on CPU for no gain on models that fit", sink, stage)
    mode = distributed_mode(env)
    if mode != "single":
        world = (os.environ if env is None else env).get("WORLD_SIZE", "?")
        choice("distributed", mode, f"{world} processes (torchrun / accelerate launch): each rank trains on its own "
               "batches, rank 0 alone writes" + (", weights sharded by the accelerate FSDP config"
                                                  if mode == "fsdp" else ""), sink, stage)
    return DevicePlan(device, dtype, bf16_amp, fp16_amp, quant, gradient_checkpointing, tuple(notes), mode)


def four_bit_support(device: str, p: Probe) -> tuple[bool, str]:
    """bitsandbytes 0.50 quantizes to NF4 and trains LoRA on it on CUDA and on CPU, not on Apple MPS."""
    if device == "mps":
        return False, "bitsandbytes has no Apple MPS backend"
    if not p.bnb:
        return False, f"bitsandbytes is not installed or failed to load ({p.bnb_error or 'pip install bitsandbytes'})"
    return True, f"bitsandbytes on {device}"


def distributed_mode(env: Optional[dict] = None) -> str:
    """single | ddp | fsdp: how this process was launched (torchrun / accelerate launch set these variables;
    an accelerate config with FSDP sets ACCELERATE_USE_FSDP)."""
    env = os.environ if env is None else env
    if str(env.get("ACCELERATE_USE_FSDP", "")).lower() in ("1", "true", "yes"):
        return "fsdp"
    return "ddp" if int(env.get("WORLD_SIZE", "1")) > 1 else "single"


def quantization_config(plan: DevicePlan, mode: str = "single"):
    """The 4-bit NF4 config for QLoRA. Under FSDP the packed 4-bit weights are stored as the compute dtype so FSDP
    can shard them like any other parameter (it cannot flatten uint8 storage next to 16-bit tensors)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if plan.device == "cuda" and plan.bf16_amp else \
        torch.float16 if plan.device == "cuda" else torch.float32
    kw = {}
    if mode == "fsdp":
        kw["bnb_4bit_quant_storage"] = compute
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, **kw)


def device_map(plan: DevicePlan, mode: str = "single") -> Optional[dict]:
    """Where from_pretrained puts the weights: a quantized model cannot be moved afterwards, so it is placed on this
    process's device at load; FSDP shards from the CPU copy itself (no device map)."""
    if not plan.quantize_4bit or mode == "fsdp":
        return None
    if plan.device == "cuda":
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": plan.device}
