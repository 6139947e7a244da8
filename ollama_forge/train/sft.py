"""Supervised fine-tuning with LoRA or QLoRA on TRL's SFTTrainer.

Library entry point: ``train_sft(recipe, run_dir, sink=None, resume=False) -> TrainResult``. Steps: load and split the
data; choose device and dtype; install the chat format's template; tokenize with the loss on what the model should
learn (``encode.py``); run the end-of-turn pre-flight and pick a pad token distinct from the end tokens
(``preflight.py``); load the base (4-bit NF4 for QLoRA) and train a LoRA adapter, checkpointing atomically; write
``run/adapter-sft`` (and ``run/adapter`` when no DPO round follows) by rename, never half-written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from ..events import Sink, choice, emit
from ..runs import RunDir, hash_config
from .callbacks import (
    run_training,
    barrier, init_distributed, install_test_hooks, is_main_process, make_callbacks, mark_finished,
    prepare_checkpoints, read_metrics, trim_metrics,
)
from .common import (
    TrainResult, checkpointing_names, emit_notes, fingerprint_paths, load_model, load_records, load_tokenizer,
    lora_config, quiet_trainer, resolve_base, save_adapter, setup_reporting, split_eval, trainer_kwargs,
    training_errors,
)

STAGE = "sft"
KEEP_CHECKPOINTS = 2  # two complete checkpoints: the newest, and one more in case the newest is unreadable


@dataclasses.dataclass
class Prepared:
    """Everything decided before the model is loaded (shared with bench/train.py)."""

    tokenizer: Any
    chat: Any
    train: Any  # Encoded
    eval: Any  # Encoded | None
    pad: Any  # PadChoice
    packing: bool
    padding_free: bool
    data_format: str
    train_locations: list
    notes: list[str]
    system_prompt: Optional[str] = None


def sft_inputs(recipe, base: str) -> dict[str, str]:
    paths = [base] + list(recipe.data.train) + list(recipe.data.eval or [])
    return fingerprint_paths(paths)


def sft_config_hash(recipe) -> str:
    t = dataclasses.asdict(recipe.train)
    for volatile in ("report_to", "logging_steps", "device"):
        t.pop(volatile, None)
    return hash_config({"train": t, "data": dataclasses.asdict(recipe.data), "chat_format": recipe.chat_format,
                        "system_prompt": recipe.system_prompt, "revision": recipe.revision})


def prepare(recipe, sink: Sink | None = None, tokenizer=None) -> Prepared:
    """Load, split, tokenize and pre-flight the SFT data (no model needed)."""
    from .chat import setup_chat
    from .encode import encode
    from .preflight import check_end_of_turn, choose_pad, used_token_ids

    t, d = recipe.train, recipe.data
    base = resolve_base(recipe)
    data = load_records(d.train, d.format, "data.train", d.skip_invalid, d.split, d.subset, sink, STAGE)
    records, locs = data.records, data.locations
    if d.eval:
        ev = load_records(d.eval, d.format, "data.eval", d.skip_invalid, d.split, d.subset, sink, STAGE)
        ev_records, ev_locs = ev.records, ev.locations
    else:
        records, locs, ev_records, ev_locs = split_eval(records, locs, d.eval_split, t.seed)
        if ev_records:
            choice("eval_split", len(ev_records), f"data.eval_split {d.eval_split} of {data.total} records held out "
                   f"(seed {t.seed})", sink, STAGE)
    tok = tokenizer if tokenizer is not None else load_tokenizer(recipe, base)
    chat = setup_chat(tok, recipe.chat_format, sink)
    system = effective_system(recipe, chat, sink)
    enc = encode(records, tok, chat, t.max_length, t.overlong, system, locs)
    ev_enc = encode(ev_records, tok, chat, t.max_length, t.overlong, system, ev_locs) if ev_records else None
    check_end_of_turn(enc, chat, tok, "data.train", locs)
    if ev_enc is not None:
        if not ev_enc.examples:
            ev_enc = None
        else:
            check_end_of_turn(ev_enc, chat, tok, "data.eval", ev_locs)
    emit(sink, "log", STAGE, enc.summary("train"))
    if ev_enc is not None:
        emit(sink, "log", STAGE, ev_enc.summary("eval"))
    pad = choose_pad(tok, chat, used_token_ids(enc, *( [ev_enc] if ev_enc else [])), sink, STAGE)
    packing = t.packing if t.packing is not None else enc.kind == "text"
    if t.packing is None:
        choice("packing", packing, "continued pretraining on raw text: pack documents into full rows"
               if packing else "chat/completion data: padding-free batching instead (no cross-example attention, "
               "same losses)", sink, STAGE)
    padding_free = True if packing else (t.padding_free if t.padding_free is not None else t.batch_size > 1)
    if t.padding_free is None and not packing:
        choice("padding_free", padding_free, "flattens each batch without padding: 1.66x tokens/s on length-skewed "
               "data with identical losses (measured)" if padding_free else "batch_size 1 has no padding", sink, STAGE)
    notes = []
    if enc.dropped:
        notes.append(f"{len(enc.dropped)} training example(s) over max_length {t.max_length} dropped "
                     "(train.overlong: truncate_prompt keeps them, cut on the prompt side)")
    return Prepared(tok, chat, enc, ev_enc, pad, packing, padding_free, data.format, locs, notes, system)


def effective_system(recipe, chat, sink: Sink | None = None) -> Optional[str]:
    """The system prompt training prepends to conversations without one: the recipe's, else the detected official
    template's default (Qwen2.5 writes one when a chat has none; the Modelfile's SYSTEM defaults to the same)."""
    if recipe.system_prompt:
        return recipe.system_prompt
    if chat.default_system:
        choice("system_prompt", repr(chat.default_system), f"the official {chat.variant or chat.name} template's "
               "default, used when a conversation has none (serving's SYSTEM defaults to it too)", sink, STAGE)
    return chat.default_system


def to_dataset(enc):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e["input_ids"] for e in enc.examples],
                              "labels": [e["labels"] for e in enc.examples]})


def train_sft(recipe, run_dir: str | os.PathLike, sink: Sink | None = None, resume: bool = False,
              force: bool = False, probe=None, should_stop=None) -> TrainResult:
    """Train the SFT LoRA adapter of ``recipe`` into ``run_dir``; see the module docstring."""
    from . import device as device_mod

    run = RunDir(run_dir)
    t = recipe.train
    main = is_main_process()
    base = resolve_base(recipe)
    inputs = sft_inputs(recipe, base)
    config_hash = sft_config_hash(recipe)
    final = run.sft_adapter
    if not force and not resume and run.is_current("train-sft", inputs, config_hash) and final.is_dir():
        emit(sink, "stage", STAGE, f"sft: {final} is current (same data and settings): skipping; --force retrains")
        return _cached_result(run, final)

    ckpt_root = run.checkpoints / STAGE
    init_distributed()
    resume_from, gone = prepare_checkpoints(ckpt_root, resume, force, "sft")
    if gone:
        emit(sink, "log", STAGE, f"discarded: {', '.join(gone)}")
    if resume and resume_from is None:
        emit(sink, "log", STAGE, "no complete checkpoint to resume from: starting from step 0")

    plan = device_mod.plan(t.method, t.device, t.dtype, strict_qlora=t.strict_qlora,
                           gradient_checkpointing=t.gradient_checkpointing, p=probe, sink=sink, stage=STAGE)
    emit_notes(list(plan.notes), sink, STAGE)
    prep = prepare(recipe, sink)
    emit_notes(prep.notes, sink, STAGE)

    if main:
        run.ensure()
        trim_metrics(run.metrics, STAGE, _step_of(resume_from))
        from ..recipe import save_resolved

        save_resolved(recipe, run.root)
    barrier()

    from trl import SFTConfig, SFTTrainer

    from .preflight import apply_pad

    model = load_model(recipe, base, plan, sink)
    grew = apply_pad(prep.tokenizer, model, prep.pad)
    if prep.chat.new_token_ids and model.get_input_embeddings().weight.shape[0] < len(prep.tokenizer):
        model.resize_token_embeddings(len(prep.tokenizer))
        grew = True
    peft_cfg = lora_config(t, prep.chat.new_token_ids or None)
    kw = trainer_kwargs(t, plan, ckpt_root / ".staging", has_eval=prep.eval is not None)
    kw.update(packing=prep.packing, packing_strategy="bfd", padding_free=prep.padding_free,
              # Examples already fit max_length (encode drops or trims them, never cutting the end token); TRL
              # refuses max_length with padding-free and no packing.
              max_length=t.max_length if prep.packing else None if prep.padding_free else t.max_length,
              dataset_num_proc=None, assistant_only_loss=False, completion_only_loss=None,
              eos_token=None, shuffle_dataset=False)
    args = SFTConfig(**checkpointing_names(SFTConfig, kw))
    train_ds = to_dataset(prep.train)
    eval_ds = to_dataset(prep.eval) if prep.eval is not None else None
    setup_reporting(t.report_to, run.logs, STAGE)
    callbacks = make_callbacks(STAGE, run.metrics, ckpt_root, KEEP_CHECKPOINTS, sink, should_stop=should_stop)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=prep.tokenizer, peft_config=peft_cfg, callbacks=callbacks)
    quiet_trainer(trainer)
    install_test_hooks(trainer)
    cb = callbacks[0]
    started = time.time()
    with training_errors(plan, t, staging=ckpt_root / ".staging"):
        out = run_training(trainer, resume_from, callbacks[0], STAGE, ckpt_root)
    seconds = time.time() - started
    merged_only = bool(prep.chat.merged_export_only or grew)
    meta = {"stage": STAGE, "base_model": recipe.base_model, "revision": recipe.revision,
            "chat_format": prep.chat.to_json(), "pad_token": prep.pad.token, "method": "qlora" if
            plan.quantize_4bit else "lora", "merged_export_only": merged_only,
            "system_prompt": prep.system_prompt, "steps": trainer.state.global_step}
    save_adapter(trainer, final, meta)
    n_tokens = trainer.state.num_input_tokens_seen
    rows = read_metrics(run.metrics, STAGE) if main else []
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    result = TrainResult(
        stage=STAGE, adapter=final, steps=trainer.state.global_step, seconds=round(seconds, 2),
        device=plan.device, dtype=plan.dtype, method="qlora" if plan.quantize_4bit else "lora",
        first_loss=losses[0] if losses else cb.first_loss, last_loss=losses[-1] if losses else None,
        first_eval_loss=evals[0] if evals else None, last_eval_loss=evals[-1] if evals else None,
        tokens_per_s=_rate(trainer, out),
        train_examples=len(prep.train.examples), eval_examples=len(prep.eval.examples) if prep.eval else 0,
        dropped=len(prep.train.dropped), truncated=prep.train.truncated,
        resumed_from=_step_of(resume_from) if resume_from else None,
        notes=list(plan.notes) + prep.notes,
        extra={"tokens": n_tokens, "packing": prep.packing, "padding_free": prep.padding_free,
               "chat_format": prep.chat.name, "pad_token": prep.pad.token, "merged_export_only": merged_only,
               "gradient_checkpointing": plan.gradient_checkpointing, "data_format": prep.data_format,
               "train_cpu_s": cb.cpu_seconds, "median_step_tokens_per_s": cb.median_step_rate(),
               "session_tokens": n_tokens - getattr(trainer, "_initial_num_input_tokens_seen", 0)},
    )
    mark_finished(ckpt_root)
    if main:
        if recipe.dpo is None:
            _publish(final, run.adapter)
        run.record("train-sft", inputs, config_hash, [final])
        emit(sink, "stage", STAGE, f"sft: done in {result.steps} steps, adapter at {final}", **_brief(result))
    barrier()
    return result


def _publish(src: Path, dst: Path) -> None:
    """``run/adapter`` is the final adapter: a hard-linked copy of the SFT one when no DPO round follows."""
    from ..atomic import atomic_path

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    with atomic_path(dst) as tmp:
        shutil.copytree(src, tmp, copy_function=link)


def _rate(trainer, out) -> Optional[float]:
    """Non-pad tokens per second of this process's training (the resumed part only, after a resume)."""
    if out is None:  # nothing trained in this process (resumed at the last step)
        return None
    runtime = out.metrics.get("train_runtime") or 0.0
    seen = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return round(seen / runtime, 1) if runtime > 0 and seen > 0 else None


def _step_of(path: Optional[Path]) -> int:
    return int(path.name.split("-")[-1]) if path is not None else -1


def _brief(r: TrainResult) -> dict[str, Any]:
    return {k: getattr(r, k) for k in ("steps", "first_loss", "last_loss", "first_eval_loss", "last_eval_loss",
                                       "tokens_per_s", "seconds")}


def _cached_result(run: RunDir, final: Path) -> TrainResult:
    import json

    from .common import META

    meta = json.loads((final / META).read_text()) if (final / META).is_file() else {}
    rows = read_metrics(run.metrics, STAGE)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    return TrainResult(STAGE, final, int(meta.get("steps", 0)), 0.0, "", "", meta.get("method", "lora"),
                       losses[0] if losses else None, losses[-1] if losses else None,
                       evals[0] if evals else None, evals[-1] if evals else None, skipped=True)
