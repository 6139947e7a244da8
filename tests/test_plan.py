"""The pre-flight planner and the shipped recipes.

The planner refuses, before any work, every problem at once: an unsupported architecture, a chat template whose labels
never hold the end-of-turn token (and is not a proven pair), a disk too small (simulated with FORGE_TEST_DISK_FREE),
an invalid Ollama name. The shipped example recipes for real models load, validate, and pass the planner with a tiny
stand-in of their base's family (the Hub is not reachable here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.train_helpers import REPO, chat_records, forge, write_jsonl, write_recipe

NO_END_JINJA = ("{{ bos_token }}{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}{% generation %}"
                "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")


def broken_registry(tmp: Path) -> Path:
    """The shipped chat formats plus `broken`: its template never writes the end-of-turn token, and it carries no
    proven hash."""
    import yaml

    reg = tmp / "modelfiles"
    shutil.copytree(REPO / "modelfiles", reg)
    (reg / "broken.yaml").write_text(yaml.safe_dump({
        "name": "broken", "description": "labels never hold <|eot_id|>", "special_tokens": ["<|eot_id|>"],
        "end_of_turn": ["<|eot_id|>"], "stop": ["<|eot_id|>"], "parameters": {}, "default_system": None,
        "detect": {"markers": [], "known": []}, "jinja": NO_END_JINJA, "ollama_template": "{{ .Prompt }}"}))
    return reg


def test_planner_refuses_before_any_work_listing_every_reason(tiny_model, tmp_path):
    base = tmp_path / "mamba-ish"
    shutil.copytree(tiny_model("llama"), base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["architectures"] = ["MixtralForCausalLM"]
    (base / "config.json").write_text(json.dumps(cfg))
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(2))
    recipe = write_recipe(tmp_path / "bad.yaml", {
        "base_model": str(base), "chat_format": "broken", "data": {"train": [str(data)], "eval_split": 0},
        "train": {"max_steps": 2}, "run_dir": str(tmp_path / "run")})
    registry = broken_registry(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    p = forge("run", str(recipe), env={"FORGE_MODELFILES": str(registry), "FORGE_TEST_DISK_FREE": "1000"})
    assert p.returncode == 2, p.stderr
    fails = [line for line in p.stderr.splitlines() if line.strip().startswith("FAIL")]
    joined = "\n".join(fails)
    assert len(fails) == 5, p.stderr
    assert "architecture MixtralForCausalLM is not supported (mixture-of-experts" in joined
    assert "chat_format broken: its template pair is not the proven one" in joined
    assert "never contain the end-of-turn token" in joined and "cannot teach the model to stop" in joined
    assert "disk: needs ~" in joined and "1.0 KB free" in joined
    assert "temp disk: the fidelity gate merges the adapter again" in joined
    assert "error: pre-flight: 5 problem(s)" in p.stderr.strip().splitlines()[-1], p.stderr
    assert "Traceback" not in p.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == before  # no run directory, nothing written


def test_planner_refuses_an_invalid_ollama_name_and_estimates_scale_with_the_model(tiny_model, tmp_path):
    from ollama_forge import recipe as R
    from ollama_forge.plan import make_plan

    data = write_jsonl(tmp_path / "train.jsonl", chat_records(2))
    r = R.from_dict({"base_model": str(tiny_model("qwen2")), "chat_format": "chatml",
                     "data": {"train": [str(data)]}, "run_dir": str(tmp_path / "run")})
    r.ollama.model = "Bad Name!"  # set after validation, as a TUI form could
    plan = make_plan(r)
    assert [c.name for c in plan.problems] == ["Ollama name"]
    assert "not a valid" in plan.problems[0].detail or "invalid" in plan.problems[0].detail.lower() or \
        plan.problems[0].hint.startswith("e.g.")
    small = plan.estimates["disk"]["need"]
    r.ollama.model = None
    r.export.keep = ["adapter", "quantized", "merged", "f16"]
    bigger = make_plan(r).estimates["disk"]
    assert bigger["need"] > small and bigger["parts"]["merged"] > 0
    assert not make_plan(r).problems


def test_parameter_count_from_headers_matches_the_model(tiny_model):
    from transformers import AutoModelForCausalLM

    from ollama_forge.plan import config_params, safetensors_params

    d = tiny_model("qwen2")
    n, size = safetensors_params(d)
    m = AutoModelForCausalLM.from_pretrained(d)
    assert n == sum(p.numel() for p in m.parameters()) + (0 if not m.config.tie_word_embeddings else
                                                           m.get_output_embeddings().weight.numel() * 0)
    assert abs(config_params(json.loads((d / "config.json").read_text())) - n) / n < 0.05
    assert size > n  # at least a byte per parameter on disk


SHIPPED = sorted(p for p in (REPO / "recipes").glob("*.yaml") if p.name != "demo.yaml")
# The tiny fixture family standing in for each recipe's base (same architecture and chat tokens).
STAND_IN = {"Qwen/Qwen2.5-0.5B-Instruct": "qwen2", "meta-llama/Llama-3.2-1B-Instruct": "llama",
            "HuggingFaceTB/SmolLM2-360M-Instruct": "llama"}


def test_there_are_example_recipes_for_real_models():
    assert {p.name for p in SHIPPED} >= {"qwen2.5-0.5b-lora.yaml", "llama-3.2-1b-qlora.yaml", "smollm2-sft-dpo.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipe_loads_validates_and_passes_the_planner(path, tiny_model, tmp_path):
    from ollama_forge import formats, recipe as R
    from ollama_forge.modelref import resolve
    from ollama_forge.plan import make_plan
    from ollama_forge.quantize import QUANT_TYPES

    r = R.load(path)
    assert resolve(r.base_model).kind == "hf_id"
    assert formats.is_proven(formats.load(r.chat_format))
    assert all(q in QUANT_TYPES for q in r.export.quant_types)
    assert r.ollama.model and r.eval.metric
    # The same settings with a local stand-in base and local data: every pre-flight check passes.
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(3))
    r.base_model = str(tiny_model(STAND_IN[r.base_model]))
    r.data.train, r.data.split, r.data.subset = [str(data)], None, None
    r.run_dir = str(tmp_path / "run")
    r.train.method = "lora"  # the planner's QLoRA path needs CUDA; its settings are checked above
    plan = make_plan(r, str(path))
    assert not plan.problems, plan.text()
