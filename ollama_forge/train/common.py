"""What SFT and DPO share: loading data, the base model and tokenizer, the LoRA config, trainer arguments that do not
blindly inherit TRL's full-fine-tune defaults, the final atomic adapter save, and one-line advice for real failures
(out of memory, gated or private Hub models)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import ForgeError
from ..events import Sink, emit
from .callbacks import barrier, is_main_process
from .device import DevicePlan

log = logging.getLogger("ollama_forge.train")

META = "forge_adapter.json"  # beside adapter_config.json: what serving and export need to know about the adapter


@dataclasses.dataclass
class TrainResult:
    stage: str  # sft | dpo
    adapter: Path
    steps: int
    seconds: float
    device: str
    dtype: str
    method: str  # lora | qlora: what actually ran
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    first_eval_loss: Optional[float] = None
    last_eval_loss: Optional[float] = None
    tokens_per_s: Optional[float] = None  # non-pad tokens per second over this process's run
    train_examples: int = 0
    eval_examples: int = 0
    dropped: int = 0
    truncated: int = 0
    resumed_from: Optional[int] = None
    skipped: bool = False  # already trained with the same inputs and settings
    notes: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adapter"] = str(self.adapter)
        return d


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_records(paths: list[str], fmt: str, where: str, skip_invalid: bool, split: Optional[str] = None,
                 subset: Optional[str] = None, sink: Sink | None = None, stage: str = "train"):
    from ..data import DataSource, load_data

    if not paths:
        raise ForgeError(f"{where}: no data given", f"list data files under {where} (or pass --data)")
    data = load_data([DataSource(p, split=split, subset=subset) for p in paths],
                     fmt=None if fmt in (None, "auto") else fmt)
    if data.problems:
        if not skip_invalid:
            data.raise_if_invalid()
        emit(sink, "log", stage, f"{where}: skipping {len(data.problems)} invalid record(s) (data.skip_invalid)")
    if not data.records:
        raise ForgeError(f"{where}: no valid records", "check the data with forge data check")
    return data


def split_eval(records: list, locations: list, fraction: float, seed: int) -> tuple[list, list, list, list]:
    """Deterministic held-out split: (train, train_locs, eval, eval_locs)."""
    n = len(records)
    k = int(round(n * fraction)) if fraction > 0 else 0
    if k == 0 or n - k < 1:
        return records, locations, [], []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    tr = [i for i in range(n) if i not in held]
    ev = sorted(held)
    return ([records[i] for i in tr], [locations[i] for i in tr], [records[i] for i in ev],
            [locations[i] for i in ev])


def fingerprint_paths(paths: list[str]) -> dict[str, str]:
    """Cheap identity of data files / model dirs for the stage manifest (names, sizes, mtimes; hashes for files
    under 64 MiB)."""
    import hashlib

    from ..runs import sha256_file

    out = {}
    for p in paths:
        q = Path(p)
        if q.is_file():
            out[p] = sha256_file(q) if q.stat().st_size < (64 << 20) else f"{q.stat().st_size}:{q.stat().st_mtime_ns}"
        elif q.is_dir():
            h = hashlib.sha256()
            for f in sorted(x for x in q.rglob("*") if x.is_file()):
                st = f.stat()
                h.update(f"{f.relative_to(q)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            out[p] = h.hexdigest()
        else:
            out[p] = "id:" + p
    return out


# ---------------------------------------------------------------------------------------------------------------
# Model and tokenizer


@contextlib.contextmanager
def hub_errors(ref: str) -> Iterator[None]:
    """Turn Hub and loading failures into one line with what to do."""
    try:
        yield
    except ForgeError:
        raise
    except Exception as e:  # huggingface_hub errors subclass OSError/HTTPError; match on status and name
        text = f"{type(e).__name__}: {e}"
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403) or "GatedRepoError" in text or "gated repo" in text.lower() or " 401" in text \
                or " 403" in text:
            raise ForgeError(f"base_model {ref}: the Hub refused access ({status or 'gated or private'})",
                             "accept the model's licence on its Hub page, then log in: `hf auth login` "
                             "(or set HF_TOKEN)") from None
        if "RepositoryNotFoundError" in text or status == 404:
            raise ForgeError(f"base_model {ref}: no such model on the Hub (or it is private)",
                             "check the id; for a private model log in with `hf auth login`") from None
        if isinstance(e, (OSError, ValueError)) and ("does not appear to have" in text or "Can't load" in text
                                                     or "not a valid" in text):
            raise ForgeError(f"base_model {ref}: cannot load: {' '.join(str(e).split())[:300]}",
                             "give an HF model directory (config.json + weights) or a Hub id") from None
        raise


def resolve_base(recipe) -> str:
    from ..modelref import resolve

    if not recipe.base_model:
        raise ForgeError("base_model: not set", "give a Hugging Face id or a local model directory")
    ref = resolve(recipe.base_model)
    if ref.kind not in ("hf_dir", "hf_id"):
        raise ForgeError(f"base_model {recipe.base_model}: training needs Hugging Face weights ({ref.kind} given)",
                         "point base_model at an HF model directory or Hub id")
    return ref.value


_REMOTE_CODE_WARNED: set[str] = set()


def warn_remote_code(recipe, name: str, sink: Sink | None = None) -> None:
    """Say loudly, once per model, that the recipe lets the model's own Python code run (it is off by default)."""
    if not recipe.trust_remote_code:
        return
    msg = (f"trust_remote_code is ON (set in the recipe): loading {name} may run Python code shipped with the "
           "model, with your permissions; only keep it on for a model whose code you have read or trust")
    if name not in _REMOTE_CODE_WARNED:
        _REMOTE_CODE_WARNED.add(name)
        log.warning("WARNING: %s", msg)
    emit(sink, "log", "train", msg, level="warning", remote_code=True)


def load_tokenizer(recipe, name: str):
    from transformers import AutoTokenizer

    warn_remote_code(recipe, name)
    with hub_errors(name):
        tok = AutoTokenizer.from_pretrained(name, revision=recipe.revision, trust_remote_code=recipe.trust_remote_code)
    return tok


def load_model(recipe, name: str, plan: DevicePlan, sink: Sink | None = None):
    from transformers import AutoModelForCausalLM

    warn_remote_code(recipe, name, sink)

    kw: dict[str, Any] = {"dtype": plan.torch_dtype, "revision": recipe.revision,
                          "trust_remote_code": recipe.trust_remote_code}
    if plan.quantize_4bit:
        from .device import device_map, quantization_config

        kw["quantization_config"] = quantization_config(plan, plan.distributed)
        kw["device_map"] = device_map(plan, plan.distributed)
    with hub_errors(name):
        model = AutoModelForCausalLM.from_pretrained(name, **kw)
    if plan.quantize_4bit:
        from peft import prepare_model_for_kbit_training

        # Norms and embeddings to fp32 for stable training on the 4-bit base (the QLoRA recipe).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.gradient_checkpointing)
    model.config.use_cache = False
    return model


def lora_config(t, extra_trainable_tokens: Optional[list[int]] = None):
    from peft import LoraConfig

    kw: dict[str, Any] = {}
    if extra_trainable_tokens:
        kw["trainable_token_indices"] = {"embed_tokens": list(extra_trainable_tokens)}
    return LoraConfig(r=t.rank, lora_alpha=t.alpha, lora_dropout=t.dropout, target_modules=t.target_modules,
                      use_rslora=t.use_rslora, bias="none", task_type="CAUSAL_LM", **kw)


def trainer_kwargs(t, plan: DevicePlan, output_dir: Path, *, has_eval: bool, steps: Optional[int] = None,
                   lr: Optional[float] = None, batch_size: Optional[int] = None) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO, each set from the recipe and the device plan (never TRL's defaults:
    bf16 on, gradient checkpointing on, lr 2e-5/1e-6)."""
    bs = batch_size or t.batch_size
    kw: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=bs, per_device_eval_batch_size=bs,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=lr if lr is not None else t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        num_train_epochs=t.epochs, max_steps=steps if steps is not None else t.max_steps,
        logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=None,
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_steps if has_eval else None,
        eval_on_start=has_eval,
        bf16=plan.bf16_amp, fp16=plan.fp16_amp,
        gradient_checkpointing=plan.gradient_checkpointing,
        use_cpu=plan.device == "cpu",
        seed=t.seed, data_seed=t.seed,
        report_to=list(t.report_to) if t.report_to else "none",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    if plan.gradient_checkpointing:
        kw["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return kw


def checkpointing_names(config_cls, kw: dict[str, Any]) -> dict[str, Any]:
    """transformers 5.24 renamed gradient_checkpointing* to activation_checkpointing*; TRL's configs still default
    the old name to True, so set the new names too (no deprecation warning, and our choice wins)."""
    import dataclasses as dc

    names = {f.name for f in dc.fields(config_cls)}
    if "activation_checkpointing" in names:
        kw["activation_checkpointing"] = kw["gradient_checkpointing"]
        if "gradient_checkpointing_kwargs" in kw:
            kw["activation_checkpointing_kwargs"] = kw["gradient_checkpointing_kwargs"]
    return kw


def setup_reporting(report_to: list[str], logs_dir: Path, stage: str) -> None:
    """``report_to`` passes through to transformers; check the packages first (one line instead of a traceback) and
    keep TensorBoard's event files in run/logs/ (by default they would land in the checkpoint staging folder)."""
    import importlib.util

    needs = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
             "trackio": ("trackio",), "comet_ml": ("comet_ml",)}
    for name in report_to:
        mods = needs.get(name)
        if mods and not any(importlib.util.find_spec(m) for m in mods):
            raise ForgeError(f"train.report_to: {name} is not installed", f"pip install {mods[0]}, or drop it from "
                             "train.report_to")
    if "tensorboard" in report_to and not os.environ.get("TENSORBOARD_LOGGING_DIR"):
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logs_dir / "tensorboard" / stage)


# ---------------------------------------------------------------------------------------------------------------
# Running and saving


@contextlib.contextmanager
def training_errors(plan: DevicePlan, t, staging: Optional[Path] = None) -> Iterator[None]:
    """Failures during training as one ForgeError line. ``staging``: the checkpoint staging folder, whose
    uncommitted contents are removed on failure (a full disk gets its space back; a rerun discards it anyway)."""
    try:
        yield
    except ForgeError:
        raise
    except Exception as e:
        if staging is not None and is_main_process():
            from ..errors import is_out_of_space, out_of_space_error

            full = is_out_of_space(e, staging)  # decided before removing the staging folder frees the space
            shutil.rmtree(staging, ignore_errors=True)
            if full:
                raise out_of_space_error(staging.parent, "a training checkpoint") from None
        text = str(e)
        oom = type(e).__name__ in ("OutOfMemoryError",) or "out of memory" in text.lower() \
            or "MPS backend out of memory" in text
        if oom:
            gc = "" if plan.gradient_checkpointing else ", set train.gradient_checkpointing: true"
            q = ", or use method: qlora" if not plan.quantize_4bit else ""
            raise ForgeError(f"out of memory on {plan.device} (batch_size {t.batch_size}, max_length {t.max_length})",
                             f"lower train.batch_size and raise train.grad_accum to keep the effective batch, "
                             f"lower train.max_length{gc}{q}") from None
        raise


def _sort_target_modules(adapter_dir: Path) -> None:
    """PEFT writes target_modules from a set, in an order that changes from process to process: sort it, so the same
    training gives the same bytes (the kill-and-rerun tests compare adapters byte for byte)."""
    for cfg in adapter_dir.rglob("adapter_config.json"):
        data = json.loads(cfg.read_text())
        if isinstance(data.get("target_modules"), list):
            data["target_modules"] = sorted(data["target_modules"])
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_adapter(trainer, final: Path, meta: dict[str, Any], adapter_names: Optional[list[str]] = None) -> Path:
    """Save the adapter (+ tokenizer, + forge meta) to a partial name on rank 0, then rename: never half-written.

    ``trainer.save_model`` runs on every rank because FSDP gathers the weights collectively; it writes on rank 0."""
    tmp = final.parent / f".{final.name}.partial"
    if is_main_process() and tmp.exists():
        shutil.rmtree(tmp)
    barrier()
    trainer.save_model(str(tmp))
    barrier()
    if is_main_process():
        for junk in ("training_args.bin",):
            (tmp / junk).unlink(missing_ok=True)
        if adapter_names:  # DPO keeps a frozen "ref" copy next to the trained adapter: ship only the trained one
            for sub in tmp.iterdir():
                if sub.is_dir() and sub.name not in adapter_names:
                    shutil.rmtree(sub)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        _sort_target_modules(tmp)
        from ..testhooks import kill_point

        kill_point("rename", f"{final.parent.name}/{final.name}")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier()
    return final


def quiet_trainer(trainer) -> None:
    """Metrics reach the user as events (progress bar, --json); transformers' own printer would repeat them raw."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def emit_notes(notes: list[str], sink: Sink | None, stage: str) -> None:
    for n in notes:
        log.warning(n)
        emit(sink, "log", stage, n, level="warning")


