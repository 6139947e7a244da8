"""Training decisions that need no training run: device/dtype/4-bit choices (device mocked: MPS and CUDA cannot run
here), loss masks, over-length handling, the end-of-turn pre-flight, pad choice, atomic checkpoints, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_forge.errors import ForgeError
from ollama_forge.train import device as D
from ollama_forge.train.callbacks import (
    COMPLETE, commit_checkpoint, complete_checkpoints, discard_incomplete, latest_checkpoint, mark_finished,
    prepare_checkpoints, read_metrics, trim_metrics,
)

CPU = D.Probe(bnb=True)
CPU_NO_BNB = D.Probe(bnb=False, bnb_error="ImportError: No module named 'bitsandbytes'")
MPS = D.Probe(mps=True, bnb=True)
A100 = D.Probe(cuda=True, cuda_name="A100", cuda_bf16=True, bnb=True)
T4 = D.Probe(cuda=True, cuda_name="T4", cuda_bf16=False, bnb=True)


# --- device, dtype, 4-bit (device mocked) ---------------------------------------------------------------------------

def test_device_order_is_cuda_then_mps_then_cpu_each_with_its_reason():
    events = []
    plan = D.plan("lora", p=D.Probe(cuda=True, cuda_name="A100", cuda_bf16=True, mps=True), sink=events.append)
    assert (plan.device, plan.dtype, plan.bf16_amp, plan.gradient_checkpointing) == ("cuda", "bfloat16", True, True)
    assert D.plan("lora", p=MPS).device == "mps"
    cpu = D.plan("lora", p=CPU)
    # CPU: fp32 (bf16 matmuls ~3x slower there), no autocast, no gradient checkpointing (TRL defaults to both on).
    assert (cpu.device, cpu.dtype, cpu.bf16_amp, cpu.fp16_amp, cpu.gradient_checkpointing) == \
        ("cpu", "float32", False, False, False)
    lines = [e.message for e in events if e.kind == "choice"]
    assert any(m.startswith("device=cuda: CUDA device A100") for m in lines), lines
    assert any(m.startswith("dtype=bfloat16:") for m in lines), lines


def test_pre_ampere_gpu_trains_in_fp16_with_loss_scaling():
    plan = D.plan("lora", p=T4)
    assert (plan.dtype, plan.fp16_amp, plan.bf16_amp) == ("float16", True, False)
    with pytest.raises(ForgeError, match="does not support bfloat16"):
        D.plan("lora", requested_dtype="bfloat16", p=T4)


def test_mps_qlora_falls_back_to_16bit_lora_with_a_one_line_notice_unless_strict():
    # Device mocked: Apple MPS cannot run on this machine.
    plan = D.plan("qlora", p=MPS)
    assert plan.device == "mps" and not plan.quantize_4bit and plan.dtype in ("bfloat16", "float16")
    assert len(plan.notes) == 1 and "\n" not in plan.notes[0]
    assert "4-bit is not available on mps" in plan.notes[0] and "LoRA" in plan.notes[0]
    with pytest.raises(ForgeError, match="qlora needs 4-bit"):
        D.plan("qlora", strict_qlora=True, p=MPS)


def test_qlora_uses_4bit_on_cpu_and_cuda_when_bitsandbytes_loads():
    assert D.plan("qlora", p=CPU).quantize_4bit
    assert D.plan("qlora", p=A100).quantize_4bit
    no = D.plan("qlora", p=CPU_NO_BNB)
    assert not no.quantize_4bit and "bitsandbytes" in no.notes[0]


def test_asking_for_a_missing_device_says_what_to_do():
    with pytest.raises(ForgeError, match="cuda asked for"):
        D.plan("lora", requested_device="cuda", p=CPU)


# --- loss masks and lengths -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_tok(tiny_model):
    from transformers import AutoTokenizer

    from ollama_forge.train.chat import setup_chat

    tok = AutoTokenizer.from_pretrained(tiny_model("llama"))
    chat = setup_chat(tok, "auto")
    return tok, chat


def _labelled(tok, ex):
    return tok.decode([t for t in ex["labels"] if t != -100])


def test_chat_loss_covers_assistant_turns_and_their_end_token_only(llama_tok):
    from ollama_forge.train.encode import encode

    tok, chat = llama_tok
    assert chat.name == "llama3" and chat.end_tokens == ["<|eot_id|>"]
    rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                        {"role": "assistant", "content": "Goodbye."}]}
    enc = encode([rec], tok, chat, 256)
    assert _labelled(tok, enc.examples[0]) == "Hello.<|eot_id|>Goodbye.<|eot_id|>"
    full = tok.decode(enc.examples[0]["input_ids"])
    assert full.startswith("<|begin_of_text|>") and "Be brief." in full  # rendered with the registry template


def test_prompt_completion_loss_is_on_the_completion_rendered_as_the_assistant_reply(llama_tok):
    from ollama_forge.train.encode import encode

    tok, chat = llama_tok
    enc = encode([{"prompt": "2+2=", "completion": "4"}], tok, chat, 256, system_prompt="Math.")
    ex = enc.examples[0]
    assert _labelled(tok, ex) == "4<|eot_id|>"
    text = tok.decode(ex["input_ids"])
    assert "<|start_header_id|>user<|end_header_id|>" in text and "Math." in text
    # Conversational prompt with an earlier assistant turn: only the completion is learned.
    conv = {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                       {"role": "user", "content": "c"}], "completion": [{"role": "assistant", "content": "d"}]}
    assert _labelled(tok, encode([conv], tok, chat, 256).examples[0]) == "d<|eot_id|>"


def test_text_is_learned_whole_ends_with_eos_and_long_documents_are_split_not_dropped(llama_tok):
    from ollama_forge.train.encode import encode

    tok, chat = llama_tok
    long = " ".join(["word"] * 100)
    enc = encode([{"text": "short doc"}, {"text": long}], tok, chat, 32)
    assert enc.kind == "text" and not enc.dropped and enc.split_documents == 1
    assert all(len(e["input_ids"]) <= 32 for e in enc.examples)
    assert enc.examples[0]["labels"] == enc.examples[0]["input_ids"]
    assert enc.examples[0]["input_ids"][-1] == tok.eos_token_id
    last_pieces = [e for e, need in zip(enc.examples, enc.needs_end) if need]
    assert len(last_pieces) == 2 and all(e["input_ids"][-1] == tok.eos_token_id for e in last_pieces)


def test_over_length_examples_are_dropped_and_counted_or_cut_on_the_prompt_side(llama_tok):
    from ollama_forge.train.encode import encode

    tok, chat = llama_tok
    long_prompt = {"messages": [{"role": "user", "content": " ".join(["question"] * 60)},
                                {"role": "assistant", "content": "Short answer."}]}
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    enc = encode([long_prompt, ok], tok, chat, 40)
    assert enc.dropped == [0] and len(enc.examples) == 1
    assert "1 over max_length 40 dropped" in enc.summary()
    cut = encode([long_prompt, ok], tok, chat, 40, overlong="truncate_prompt")
    assert cut.truncated == 1 and not cut.dropped
    ex = cut.examples[0]
    assert len(ex["input_ids"]) == 40 and ex["input_ids"][0] == tok.bos_token_id
    assert _labelled(tok, ex) == "Short answer.<|eot_id|>"  # the reply and its end token survive
    long_reply = {"messages": [{"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": " ".join(["answer"] * 60)}]}
    assert encode([long_reply], tok, chat, 40, overlong="truncate_prompt").dropped == [0]  # never cut the reply


# --- end-of-turn pre-flight -----------------------------------------------------------------------------------------

BROKEN_JINJA = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
                "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}<|eot_id|>"
                "{% else %}{{ m.content }}<|eot_id|>{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
NO_END_JINJA = ("{{ bos_token }}{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}"
                "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.mark.parametrize("jinja, why", [(BROKEN_JINJA, "outside the assistant's loss span"),
                                        (NO_END_JINJA, "never writes '<|eot_id|>'")],
                         ids=["end-token-outside-generation", "no-end-token"])
def test_preflight_refuses_labels_that_cannot_teach_the_model_to_stop(tiny_model, jinja, why):
    from transformers import AutoTokenizer

    from ollama_forge import formats
    from ollama_forge.train.chat import setup_chat
    from ollama_forge.train.encode import encode
    from ollama_forge.train.preflight import check_end_of_turn

    tok = AutoTokenizer.from_pretrained(tiny_model("llama"))
    fmt = formats.custom(jinja, "{{ .Prompt }}", ["<|eot_id|>"], ["<|eot_id|>"], name="broken")
    chat = setup_chat(tok, fmt=fmt)
    recs = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}] * 3
    enc = encode(recs, tok, chat, 128)
    with pytest.raises(ForgeError) as e:
        check_end_of_turn(enc, chat, tok, "data.train", ["train.jsonl:1", "train.jsonl:2", "train.jsonl:3"])
    msg = e.value.one_line()
    assert "train.jsonl:1" in msg and "3 of 3 examples never contain the end-of-turn token" in msg, msg
    assert why in msg and "cannot teach the model to stop" in msg, msg
    assert "chat_format" in e.value.hint  # the fix


def test_all_examples_over_length_is_refused_with_the_fix(llama_tok):
    from ollama_forge.train.encode import encode
    from ollama_forge.train.preflight import check_end_of_turn

    tok, chat = llama_tok
    rec = {"messages": [{"role": "user", "content": " ".join(["q"] * 50)}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(ForgeError, match="all 1 records are longer than train.max_length 20"):
        check_end_of_turn(encode([rec], tok, chat, 20), chat, tok)


def test_pad_token_is_distinct_from_the_end_tokens_reusing_an_unused_special_token(tiny_model, llama_tok):
    from transformers import AutoTokenizer

    from ollama_forge.train.chat import setup_chat
    from ollama_forge.train.preflight import apply_pad, choose_pad

    tok, chat = llama_tok  # Llama 3 has no pad token: its reserved pad slot is reused, the vocabulary stays put
    pad = choose_pad(tok, chat, set())
    assert pad.token == "<|finetune_right_pad_id|>" and not pad.added
    mis = AutoTokenizer.from_pretrained(tiny_model("mistral"))
    mchat = setup_chat(mis, "auto")
    mis.pad_token = mis.eos_token  # the classic mistake: pad == eos erases every end-of-turn label
    p = choose_pad(mis, mchat, set())
    assert p.id not in mchat.end_ids and p.id != mis.eos_token_id and not p.added
    # Nothing unused: a new token is added (merged export only) and applied.
    everything = set(range(len(mis) + 10))
    p2 = choose_pad(mis, mchat, everything)
    assert p2.added and "merged export only" in p2.reason
    n = len(mis)
    apply_pad(mis, None, p2)
    assert len(mis) == n + 1 and mis.pad_token == "<|pad|>"


# --- atomic checkpoints and the metrics file ------------------------------------------------------------------------

def _fake_ckpt(root: Path, name: str, complete: bool) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (d / COMPLETE).write_text("{}")
    return d


def test_resume_only_sees_complete_checkpoints_and_incomplete_ones_are_discarded(tmp_path):
    root = tmp_path / "checkpoints" / "sft"
    _fake_ckpt(root, "step-10", True)
    _fake_ckpt(root, "step-20", False)  # a kill after the rename but before... cannot happen; a stray copy can
    _fake_ckpt(root, ".staging/checkpoint-30", False)  # what transformers was writing when killed
    assert latest_checkpoint(root).name == "step-10"
    gone = discard_incomplete(root)
    assert sorted(gone) == [".staging", "step-20"] and [p.name for _, p in complete_checkpoints(root)] == ["step-10"]
    staged = _fake_ckpt(root, ".staging/checkpoint-40", False)
    final = commit_checkpoint(staged, root, 40, keep=1)
    assert final.name == "step-40" and (final / COMPLETE).is_file() and not staged.exists()
    assert [p.name for _, p in complete_checkpoints(root)] == ["step-40"]  # rotation kept the newest one


def test_a_fresh_start_refuses_to_bury_an_interrupted_run_but_clears_a_finished_one(tmp_path):
    root = tmp_path / "checkpoints" / "sft"
    _fake_ckpt(root, "step-10", True)
    with pytest.raises(ForgeError, match="checkpoints of an interrupted sft run .up to step 10.") as e:
        prepare_checkpoints(root, resume=False, force=False, where="sft")
    assert e.value.message.startswith(str(root)) and "--resume" in e.value.hint and "--force" in e.value.hint
    start, _ = prepare_checkpoints(root, resume=True, force=False, where="sft")
    assert start.name == "step-10"
    mark_finished(root)  # the stage wrote its adapter: a new run (e.g. changed settings) starts clean
    start, gone = prepare_checkpoints(root, resume=False, force=False, where="sft")
    assert start is None and "earlier checkpoints" in gone and not complete_checkpoints(root)
    _fake_ckpt(root, "step-4", True)
    assert prepare_checkpoints(root, resume=False, force=True, where="sft")[0] is None  # --force: start over
    assert not complete_checkpoints(root)


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
    m = tmp_path / "metrics.jsonl"
    rows = [{"stage": "sft", "step": s, "loss": 1.0 / s} for s in (5, 10, 15)] + [{"stage": "dpo", "step": 20}]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "sft", "st')  # a line cut by SIGKILL
    trim_metrics(m, "sft", 10)
    assert [(r["stage"], r["step"]) for r in read_metrics(m)] == [("sft", 5), ("sft", 10), ("dpo", 20)]


# --- CLI ------------------------------------------------------------------------------------------------------------

def test_cli_flags_map_to_recipe_keys_and_set_reaches_any_key(tmp_path):
    import argparse

    from ollama_forge.commands import train as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args(["--model", "m", "--data", "a.jsonl", "--rank", "8", "--lr", "1e-4", "--no-packing",
                         "--dpo", "pairs.jsonl", "--set", "train.dropout=0.1", "--set", "dpo.beta=0.2"])
    rec, run_dir = cmd.load_recipe(args)
    assert (rec.base_model, rec.data.train, rec.train.rank, rec.train.learning_rate) == ("m", ["a.jsonl"], 8, 1e-4)
    assert rec.train.packing is False and rec.train.dropout == 0.1
    assert rec.dpo.data == ["pairs.jsonl"] and rec.dpo.beta == 0.2
    assert run_dir == str(Path("runs") / "m")


def test_progress_shows_a_bar_with_eta_and_a_loss_sparkline():
    import io

    from ollama_forge.commands.train import ProgressPrinter, sparkline
    from ollama_forge.events import Event

    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"

    class TTY(io.StringIO):
        def isatty(self):
            return True

    out = TTY()
    pr = ProgressPrinter(out)
    pr(Event("metric", "sft", "", {"step": 5, "loss": 2.0}))
    pr(Event("metric", "sft", "", {"step": 10, "loss": 1.0}))
    pr(Event("progress", "sft", "", {"step": 10, "total": 40, "eta_s": 75.0}))
    text = out.getvalue()
    assert "10/40" in text and "ETA 01:15" in text and "loss 1.000" in text and "█" in text


def test_forge_train_without_recipe_or_model_is_a_one_line_error():
    from tests.train_helpers import forge

    r = forge("train", timeout=60)
    assert r.returncode == 2 and "forge train: error:" in r.stderr and "Traceback" not in r.stderr


def test_fsdp_launch_is_detected_and_qlora_stores_4bit_weights_shardably():
    # Device and launcher mocked: FSDP needs several GPUs; this checks the settings forge hands to transformers.
    env = {"WORLD_SIZE": "8", "ACCELERATE_USE_FSDP": "true", "LOCAL_RANK": "3"}
    events = []
    plan = D.plan("qlora", p=A100, env=env, sink=events.append)
    assert plan.distributed == "fsdp" and plan.quantize_4bit
    assert any(e.message.startswith("distributed=fsdp: 8 processes") for e in events)
    q = D.quantization_config(plan, plan.distributed)
    import torch

    assert q.bnb_4bit_quant_storage in (torch.bfloat16, "bfloat16") and q.bnb_4bit_quant_type == "nf4"
    assert D.device_map(plan, "fsdp") is None  # FSDP shards from the CPU copy
    ddp = D.plan("qlora", p=A100, env={"WORLD_SIZE": "2"})
    assert ddp.distributed == "ddp" and D.distributed_mode({}) == "single"


def test_report_to_checks_the_package_and_keeps_tensorboard_logs_in_the_run(tmp_path, monkeypatch):
    import importlib.util

    from ollama_forge.train.common import setup_reporting

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ForgeError, match="train.report_to: wandb is not installed"):
        setup_reporting(["wandb"], tmp_path / "logs", "sft")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    setup_reporting(["tensorboard"], tmp_path / "logs", "sft")
    import os

    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "logs" / "tensorboard" / "sft")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR")


def test_plain_and_implicit_prompt_pairs_become_conversations_as_serving_sees_them():
    from ollama_forge.train.dpo import as_conversational_pair

    plain = as_conversational_pair({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}, "Be kind.")
    assert plain == {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
                     "chosen": [{"role": "assistant", "content": "Hello!"}],
                     "rejected": [{"role": "assistant", "content": "Go away."}]}
    user = {"role": "user", "content": "Hi"}
    implicit = as_conversational_pair({"chosen": [user, {"role": "assistant", "content": "Hello!"}],
                                       "rejected": [user, {"role": "assistant", "content": "No."}]}, None)
    assert implicit["prompt"] == [user] and implicit["rejected"] == [{"role": "assistant", "content": "No."}]


def test_real_user_failures_become_one_line_advice():
    from ollama_forge.train.common import hub_errors, training_errors

    class Response:
        status_code = 401

    class HubError(OSError):
        response = Response()

    with pytest.raises(ForgeError) as e:
        with hub_errors("meta-llama/Llama-3.1-8B"):
            raise HubError("401 Client Error: Unauthorized")
    assert "refused access (401)" in e.value.message and "hf auth login" in e.value.hint
    plan = D.plan("lora", p=A100)
    from ollama_forge.recipe import TrainConfig

    with pytest.raises(ForgeError) as e:
        with training_errors(plan, TrainConfig()):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert e.value.message == "out of memory on cuda (batch_size 4, max_length 1024)"
    assert "lower train.batch_size" in e.value.hint and "method: qlora" in e.value.hint
