"""DPO after SFT: continue from the SFT adapter, with the SFT model as the reference policy.

Library entry point: ``train_dpo(recipe, run_dir, sink=None, resume=False) -> TrainResult``.

The reference must be the SFT model, not the raw base: DPO's implicit reward is the policy's log-ratio against the
reference, and against the base that ratio would credit everything SFT taught as "preferred". trl 1.16's DPOTrainer
has no ``ref_adapter_name``; given a PeftModel that already holds the SFT adapter and no ``peft_config``, it keeps a
frozen copy of that adapter ("ref") and computes reference log-probs with it, which is exactly the SFT model.

Pairs are rendered as conversations with the same chat format as SFT (plain-text pairs become a user prompt and
assistant replies, as serving will see them); pairs over the length limit are dropped and counted, never cut through
the end-of-turn token; the end-of-turn pre-flight runs on chosen and rejected replies alike.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import ForgeError
from ..events import Sink, choice, emit
from ..runs import RunDir, hash_config
from .callbacks import (
    run_training,
    barrier, init_distributed, install_test_hooks, is_main_process, make_callbacks, mark_finished,
    prepare_checkpoints, read_metrics, trim_metrics,
)
from .common import (
    META, TrainResult, checkpointing_names, emit_notes, fingerprint_paths, load_model, load_records, quiet_trainer,
    save_adapter, setup_reporting, split_eval, trainer_kwargs, training_errors,
)
from .sft import KEEP_CHECKPOINTS, _rate, _step_of

STAGE = "dpo"


def as_conversational_pair(rec: dict[str, Any], system: Optional[str]) -> dict[str, list[dict[str, str]]]:
    """A canonical preference record as {prompt, chosen, rejected} message lists."""
    from .encode import with_system

    chosen, rejected = rec["chosen"], rec["rejected"]
    if "prompt" in rec:
        prompt = rec["prompt"]
        p = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        c = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
        r = rejected if isinstance(rejected, list) else [{"role": "assistant", "content": rejected}]
    else:  # implicit prompt: the shared leading turns of two full conversations
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        p, c, r = chosen[:k], chosen[k:], rejected[k:]
    return {"prompt": with_system(p, system), "chosen": c, "rejected": r}


def prepare_pairs(records: list, tokenizer, chat, max_length: int, system: Optional[str], where: str,
                  locations: Optional[list] = None) -> tuple[list[dict], int]:
    """Conversational pairs that fit ``max_length`` with their end-of-turn token; (pairs, dropped)."""
    from .encode import encode
    from .preflight import check_end_of_turn

    pairs = [as_conversational_pair(r, system) for r in records]
    both = [{"prompt": p["prompt"], "completion": p[side]} for p in pairs for side in ("chosen", "rejected")]
    locs = [loc for loc in locations for _ in range(2)] if locations else None
    enc = encode(both, tokenizer, chat, max_length, "drop", None, locs)
    check_end_of_turn(enc, chat, tokenizer, where, locs)
    dropped_records = {i // 2 for i in enc.dropped}
    keep = [p for i, p in enumerate(pairs) if i not in dropped_records]
    return keep, len(dropped_records)


def load_pairs(paths: list[str], where: str, skip_invalid: bool, sink: Sink | None):
    data = load_records(paths, "auto", where, skip_invalid, sink=sink, stage=STAGE)
    if data.canonical_format != "preference":
        raise ForgeError(f"{where}: expected preference pairs (prompt/chosen/rejected), found {data.format} data "
                         f"({data.reason})", "give DPO files whose records have chosen and rejected")
    return data


def train_dpo(recipe, run_dir: str | os.PathLike, sink: Sink | None = None, resume: bool = False,
              force: bool = False, probe=None, should_stop=None, sft_adapter: Optional[str | os.PathLike] = None) -> TrainResult:
    from datasets import Dataset

    from . import device as device_mod
    from .chat import setup_chat

    d, t = recipe.dpo, recipe.train
    if d is None or not d.data:
        raise ForgeError("dpo: no preference data", "add dpo.data to the recipe, or pass --dpo PAIRS")
    run = RunDir(run_dir)
    main = is_main_process()
    sft = Path(sft_adapter) if sft_adapter else run.sft_adapter
    if not (sft / "adapter_config.json").is_file():
        raise ForgeError(f"dpo: no SFT adapter at {sft}", "run SFT first (forge train RECIPE without --dpo), "
                         "or give the run directory that holds adapter-sft/")
    meta = json.loads((sft / META).read_text()) if (sft / META).is_file() else {}
    inputs = fingerprint_paths([str(sft)] + list(d.data) + list(d.eval or []))
    if sft == run.sft_adapter:  # the run's own SFT adapter: keyed by role, so a moved run directory stays current
        inputs["adapter-sft"] = inputs.pop(str(sft))
    cfg_hash = hash_config({"dpo": dict(vars(d)), "seed": t.seed, "max_length": d.max_length or t.max_length})
    if not force and not resume and run.is_current("train-dpo", inputs, cfg_hash) and run.adapter.is_dir():
        emit(sink, "stage", STAGE, f"dpo: {run.adapter} is current (same pairs and settings): skipping")
        return TrainResult(STAGE, run.adapter, d.steps, 0.0, "", "", meta.get("method", "lora"), skipped=True)

    ckpt_root = run.checkpoints / STAGE
    init_distributed()
    resume_from, gone = prepare_checkpoints(ckpt_root, resume, force, "dpo")
    if gone:
        emit(sink, "log", STAGE, f"discarded: {', '.join(gone)}")

    plan = device_mod.plan(t.method, t.device, t.dtype, strict_qlora=t.strict_qlora,
                           gradient_checkpointing=t.gradient_checkpointing, p=probe, sink=sink, stage=STAGE)
    emit_notes(list(plan.notes), sink, STAGE)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(sft))  # the SFT run's tokenizer: its template and pad token
    chat_name = (meta.get("chat_format") or {}).get("name") or recipe.chat_format
    chat = setup_chat(tok, chat_name, sink, reason=f"the SFT adapter's chat format ({sft.name})")
    system = meta.get("system_prompt", recipe.system_prompt)
    max_length = d.max_length or t.max_length
    data = load_pairs(d.data, "dpo.data", recipe.data.skip_invalid, sink)
    if d.eval:
        ev = load_pairs(d.eval, "dpo.eval", recipe.data.skip_invalid, sink)
        records, locs, ev_records, ev_locs = data.records, data.locations, ev.records, ev.locations
    else:
        records, locs, ev_records, ev_locs = split_eval(data.records, data.locations, d.eval_split, t.seed)
        if ev_records:
            choice("dpo_eval_split", len(ev_records), f"dpo.eval_split {d.eval_split} of {data.total} pairs held out "
                   "to measure the reward margin", sink, STAGE)
    pairs, dropped = prepare_pairs(records, tok, chat, max_length, system, "dpo.data", locs)
    ev_pairs, _ = prepare_pairs(ev_records, tok, chat, max_length, system, "dpo.data (eval)", ev_locs) \
        if ev_records else ([], 0)
    if not pairs:
        raise ForgeError(f"dpo.data: every pair is longer than {max_length} tokens", "raise dpo.max_length")
    notes = []
    if dropped:
        notes.append(f"{dropped} preference pair(s) over max_length {max_length} dropped")
    emit(sink, "log", STAGE, f"dpo: {len(pairs)} pairs, {len(ev_pairs)} held out" +
         (f"; {dropped} over max_length dropped" if dropped else ""))
    emit_notes(notes, sink, STAGE)

    if main:
        run.ensure()
        trim_metrics(run.metrics, STAGE, _step_of(resume_from))
    barrier()

    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    base_name = meta.get("base_model") or recipe.base_model
    from .common import resolve_base

    base = load_model(recipe, resolve_base(recipe) if not meta.get("base_model") else _resolve(base_name), plan, sink)
    if base.get_input_embeddings().weight.shape[0] < len(tok):
        base.resize_token_embeddings(len(tok))
    base.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(base, str(sft), is_trainable=True)
    choice("dpo_reference", "sft", f"the SFT adapter ({sft.name}) as a frozen copy, not the raw base", sink, STAGE)
    kw = trainer_kwargs(t, plan, ckpt_root / ".staging", has_eval=bool(ev_pairs), steps=d.steps,
                        lr=d.learning_rate, batch_size=d.batch_size)
    kw.update(beta=d.beta, max_length=max_length, gradient_accumulation_steps=1, precompute_ref_log_probs=False,
              num_train_epochs=1.0)
    args = DPOConfig(**checkpointing_names(DPOConfig, kw))
    train_ds = Dataset.from_list(pairs)
    eval_ds = Dataset.from_list(ev_pairs) if ev_pairs else None
    setup_reporting(t.report_to, run.logs, STAGE)
    callbacks = make_callbacks(STAGE, run.metrics, ckpt_root, KEEP_CHECKPOINTS, sink, should_stop=should_stop)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tok, callbacks=callbacks)
    quiet_trainer(trainer)
    install_test_hooks(trainer)
    started = time.time()
    with training_errors(plan, t, staging=ckpt_root / ".staging"):
        out = run_training(trainer, resume_from, callbacks[0], STAGE, ckpt_root)
    seconds = time.time() - started
    # The run's own SFT adapter is named relative to the run, so a moved run directory holds the same bytes.
    reference = sft.name if sft.resolve() == run.sft_adapter.resolve() else str(sft)
    new_meta = {**meta, "stage": STAGE, "dpo": {"beta": d.beta, "steps": trainer.state.global_step,
                                                 "learning_rate": d.learning_rate, "reference": reference}}
    save_adapter(trainer, run.adapter, new_meta, adapter_names=["default"])
    rows = read_metrics(run.metrics, STAGE) if main else []
    evals = [r for r in rows if "eval_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    result = TrainResult(
        stage=STAGE, adapter=run.adapter, steps=trainer.state.global_step, seconds=round(seconds, 2),
        device=plan.device, dtype=plan.dtype, method="qlora" if plan.quantize_4bit else "lora",
        first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
        first_eval_loss=evals[0]["eval_loss"] if evals else None,
        last_eval_loss=evals[-1]["eval_loss"] if evals else None, tokens_per_s=_rate(trainer, out),
        train_examples=len(pairs), eval_examples=len(ev_pairs), dropped=dropped,
        resumed_from=_step_of(resume_from) if resume_from else None, notes=list(plan.notes) + notes,
        extra={"first_eval_margin": evals[0].get("eval_rewards_margins") if evals else None,
               "last_eval_margin": evals[-1].get("eval_rewards_margins") if evals else None,
               "reference": str(sft)})
    mark_finished(ckpt_root)
    if main:
        run.record("train-dpo", inputs, cfg_hash, [run.adapter])
        emit(sink, "stage", STAGE, f"dpo: done in {result.steps} steps, adapter at {run.adapter}")
    barrier()
    return result


def _resolve(name: str) -> str:
    from ..modelref import resolve

    return resolve(name).value
