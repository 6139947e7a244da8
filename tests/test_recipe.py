"""Recipes: typed, defaults filled in, CLI overrides win, unknown keys and contradictions refused with the key."""

from __future__ import annotations

import pytest
import yaml

from ollama_forge import recipe as R
from ollama_forge.errors import ForgeError

FULL = """
base_model: Qwen/Qwen2.5-0.5B-Instruct
chat_format: chatml
system_prompt: You are terse.
data:
  train: [data/train.jsonl]
  eval_split: 0.2
train:
  method: qlora
  rank: 8
  alpha: 16
  target_modules: [q_proj, v_proj]
  learning_rate: 2e-4
  max_steps: 30
dpo:
  data: data/pairs.jsonl
  beta: 0.2
export:
  quant_types: [Q4_K_M, Q8_0]
ollama:
  model: my-bot:v1
  parameters: {temperature: 0.2}
eval:
  prompts: data/eval.jsonl
"""


def write(tmp_path, text):
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def test_full_recipe_loads_typed_with_defaults(tmp_path):
    r = R.load(write(tmp_path, FULL))
    assert r.train.method == "qlora" and r.train.rank == 8 and r.train.learning_rate == 2e-4
    assert isinstance(r.train.learning_rate, float)  # YAML 1.1 reads "2e-4" as a string
    assert r.dpo.data == ["data/pairs.jsonl"] and r.dpo.beta == 0.2
    assert r.train.batch_size == 4 and r.export.outtype == "f16"  # defaults filled in
    assert r.ollama.parameters == {"temperature": 0.2}


def test_unknown_key_says_did_you_mean(tmp_path):
    with pytest.raises(ForgeError) as e:
        R.load(write(tmp_path, "base_model: x\ntrain:\n  lerning_rate: 1e-4\n"))
    assert "train.lerning_rate: unknown key 'lerning_rate'" in e.value.message
    assert "did you mean 'learning_rate'" in e.value.one_line()


@pytest.mark.parametrize("text, key", [
    ("train:\n  rank: sixteen\n", "train.rank: expected an integer"),
    ("train:\n  method: full\n", "train.method: 'full' is not one of lora, qlora"),
    ("train:\n  packing: maybe\n", "train.packing: expected true or false"),
    ("data: data.jsonl\n", "data: expected a mapping"),
    ("export:\n  outtype: q4\n", "export.outtype"),
])
def test_wrong_types_name_the_key(tmp_path, text, key):
    with pytest.raises(ForgeError, match=key.replace("(", r"\(")):
        R.load(write(tmp_path, "base_model: x\n" + text))


@pytest.mark.parametrize("text, key", [
    ("train:\n  epochs: 0\n  max_steps: -1\n", "nothing would train"),
    ("dpo:\n  beta: 0.1\n", "dpo.data: DPO is configured without preference data"),
    ("train:\n  packing: true\n  padding_free: false\n", "packing needs padding-free"),
    ("data:\n  format: preference\n", "preference pairs are DPO data"),
    ("train:\n  rank: 0\n", "train.rank: must be positive"),
])
def test_contradictory_settings_are_refused(tmp_path, text, key):
    with pytest.raises(ForgeError, match=key):
        R.load(write(tmp_path, "base_model: x\n" + text))


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ForgeError, match=r"recipe.yaml:3: invalid YAML"):
        R.load(write(tmp_path, "base_model: x\ntrain:\n  rank: 1: 2\nexport: {}\n"))


def test_cli_overrides_beat_the_file_and_resolved_recipe_is_written(tmp_path):
    p = write(tmp_path, FULL)
    r = R.load(p, R.parse_set(["train.rank=32", "train.target_modules=[q_proj]", "ollama.parameters={top_k: 5}"]))
    assert r.train.rank == 32 and r.train.target_modules == ["q_proj"] and r.ollama.parameters == {"top_k": 5}
    with pytest.raises(ForgeError, match="did you mean 'rank'"):
        R.apply_overrides(r, {"train.rnk": "3"})
    out = R.save_resolved(r, tmp_path / "run")
    back = yaml.safe_load(out.read_text())
    assert back["train"]["rank"] == 32 and back["train"]["batch_size"] == 4  # defaults written too
    assert R.from_dict(back) == r  # the resolved file reloads to the same recipe


def test_override_can_switch_on_an_optional_section(tmp_path):
    r = R.load(write(tmp_path, "base_model: x\n"), {"dpo.data": "pairs.jsonl"})
    assert r.dpo is not None and r.dpo.data == ["pairs.jsonl"] and r.dpo.beta == 0.1


def test_every_field_has_help_in_the_reference():
    text = R.reference()
    assert "`train.learning_rate` (default `0.0002`)" in text
    for line in text.splitlines():
        if line.startswith("- `"):
            assert line.split("): ", 1)[1].strip(), f"field without help: {line}"


def test_docs_recipe_reference_is_current():
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"
    assert doc.read_text() == R.reference(), "regenerate: python -c 'from ollama_forge.recipe import reference; " \
        "print(reference(), end=\"\")' > docs/recipe.md"


def test_invalid_ollama_name_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ForgeError, match="ollama.model: 'my bot!' is not a valid Ollama name") as e:
        R.load(write(tmp_path, "base_model: x\nollama:\n  model: my bot!\n"))
    assert "e.g. 'my" in e.value.one_line()
