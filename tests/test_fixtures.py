"""Every tiny fixture loads with transformers, generates, and round-trips its chat template (foundation check 4).

Also: each fixture keeps the features that distinguish its family (and those features move the logits, so tests
built on the fixtures can see a converter ignore them), SentencePiece families tokenize exactly like sentencepiece,
and the cache reuses, rebuilds and survives concurrent or failed builds as other tests rely on.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.fixtures import tiny_models
from tests.fixtures.tiny_models import FAMILIES, FAMILY_NAMES, MIXED_TEXT


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TURNS = [
    {"role": "user", "content": "Hello! What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And  two plus two? 🙂 Answer in digits: 4096."},
]

# What each family's own template ends with when asked for a generation prompt (Mistral's has no such branch).
GENERATION_PROMPT = {
    "llama": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "[/INST]",
    "qwen2": "<|im_start|>assistant\n",
    "qwen3": "<|im_start|>assistant\n",
    "gemma2": "<start_of_turn>model\n",
    "gemma3": "<start_of_turn>model\n",
    "phi3": "<|assistant|>\n",
}
GENERATION_PROMPT["llama-q"] = GENERATION_PROMPT["llama"]
GENERATION_PROMPT["qwen2-q"] = GENERATION_PROMPT["qwen2"]

SPM_FAMILIES = [n for n in FAMILY_NAMES if FAMILIES[n].tokenizer["kind"] == "spm"]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """(path, tokenizer, model) per family, loaded once for this module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache: dict[str, tuple[Path, object, object]] = {}

    def get(name: str):
        if name not in cache:
            path = tiny_model(name)
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            cache[name] = (path, tok, model)
        return cache[name]

    return get


def _conversation(name: str) -> list[dict]:
    return ([SYSTEM] if FAMILIES[name].system_role else []) + TURNS


def _rendered(tok, name: str) -> str:
    return tok.apply_chat_template(_conversation(name), tokenize=False, add_generation_prompt=True)


def _safetensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}


def _corpus_ids(tok, limit: int | None = None) -> "torch.Tensor":
    ids = tok(tiny_models.CORPUS[:400], add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[:limit] if limit else ids])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_fixture_loads_and_generates_greedily(name, loaded):
    path, tok, model = loaded(name)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja"} <= {p.name for p in path.iterdir()}
    assert {dtype for dtype, _ in _safetensors(path).values()} == {"F32"}
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size >= len(tok)

    prompt = torch.tensor([tok(_rendered(tok, name), add_special_tokens=False)["input_ids"]])
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        first = model.generate(prompt, **kwargs)
        second = model.generate(prompt, **kwargs)
    assert first.shape == (1, prompt.shape[1] + 6)
    assert torch.equal(first, second), "greedy generation must be deterministic"
    assert torch.equal(first[:, : prompt.shape[1]], prompt)
    assert int(first.max()) < model.config.vocab_size
    assert isinstance(tok.decode(first[0, prompt.shape[1]:]), str)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_chat_template_renders_and_round_trips(name, loaded):
    path, tok, _ = loaded(name)
    assert (path / "chat_template.jinja").read_text(encoding="utf-8") == FAMILIES[name].chat_template
    text = _rendered(tok, name)
    for message in _conversation(name):
        assert message["content"] in text
    assert text.endswith(GENERATION_PROMPT[name])
    if name.startswith(("llama", "mistral", "gemma")):
        assert text.startswith(tok.bos_token), "these templates write bos themselves"

    ids = tok(text, add_special_tokens=False)["input_ids"]
    decoded = tok.decode(ids)
    expected = text
    rstrip = [c for c, _, r in FAMILIES[name].tokenizer["added"] if r]
    if rstrip:  # Phi-3: the tokenizer eats whitespace after its chat tokens, exactly as the real one does
        expected = re.sub("(" + "|".join(map(re.escape, rstrip)) + r")\s+", r"\1", text)
        assert expected != text
    assert decoded == expected
    assert tok(decoded, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_chat_tokens_are_single_ids_marked_special(name, loaded):
    path, tok, model = loaded(name)
    spec = FAMILIES[name].tokenizer
    added = {t["content"]: t for t in json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]}
    declared = {c: s for c, s, _ in spec["added"]}
    for content in spec["chat_tokens"]:
        ids = tok(content, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"{content} splits into {ids}"
        assert ids[0] < model.config.vocab_size
        assert added[content]["special"] is declared.get(content, True), content
        assert tok.decode(ids) == content
    # Role tokens as the real models set them.
    for role, content in spec["roles"].items():
        assert getattr(tok, role) == content, role


def _expect_features(name: str, cfg, path: Path, tok) -> None:
    tensors = _safetensors(path)
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if name.endswith("-q"):
        assert cfg.hidden_size % 256 == 0 and cfg.intermediate_size % 256 == 0
    else:
        assert cfg.hidden_size % 256 != 0, "plain fixtures must exercise quantization fallback"
    if name.startswith("llama"):
        assert cfg.architectures == ["LlamaForCausalLM"]
        rope = cfg.rope_parameters
        assert rope["rope_type"] == "llama3"
        assert {rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]} == {8.0, 1.0, 4.0}
        assert rope["original_max_position_embeddings"] < cfg.max_position_embeddings
        assert kv < heads and not cfg.tie_word_embeddings
        assert tok("hi")["input_ids"][0] == tok.bos_token_id == cfg.bos_token_id
        assert tok.convert_tokens_to_ids("<|eot_id|>") in cfg.eos_token_id
    elif name == "mistral":
        assert cfg.architectures == ["MistralForCausalLM"] and cfg.model_type == "mistral"
        assert kv < heads and cfg.sliding_window is None and not cfg.tie_word_embeddings
        assert cfg.intermediate_size % 32 != 0, "mistral's ffn_down row must defeat even 32-blocks (F16 fallback)"
        assert tok("hi")["input_ids"][0] == tok.bos_token_id
    elif name.startswith("qwen2"):
        assert cfg.architectures == ["Qwen2ForCausalLM"] and cfg.tie_word_embeddings
        assert "lm_head.weight" not in tensors
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert f"model.layers.0.self_attn.{proj}.bias" in tensors
        assert tok.bos_token is None and tok.pad_token == "<|endoftext|>"
        assert tok("hi")["input_ids"][0] != tok.convert_tokens_to_ids("<|endoftext|>")
        assert cfg.vocab_size > len(tok), "embedding rows padded beyond the tokenizer, as Qwen2.5's"
    elif name == "qwen3":
        assert cfg.architectures == ["Qwen3ForCausalLM"] and cfg.tie_word_embeddings
        assert cfg.head_dim != cfg.hidden_size // heads
        assert tensors["model.layers.0.self_attn.q_norm.weight"][1] == [cfg.head_dim]
        assert tensors["model.layers.0.self_attn.q_proj.weight"][1] == [heads * cfg.head_dim, cfg.hidden_size]
        assert "model.layers.0.self_attn.q_proj.bias" not in tensors
    elif name == "gemma2":
        assert cfg.architectures == ["Gemma2ForCausalLM"] and cfg.tie_word_embeddings
        assert cfg.attn_logit_softcapping and cfg.final_logit_softcapping
        assert cfg.sliding_window == 16 and set(cfg.layer_types) == {"sliding_attention", "full_attention"}
        assert cfg.query_pre_attn_scalar == head_dim
        assert "lm_head.weight" not in tensors
    elif name == "gemma3":
        assert cfg.architectures == ["Gemma3ForCausalLM"] and cfg.model_type == "gemma3_text"
        rope = cfg.rope_parameters
        assert rope["sliding_attention"]["rope_theta"] != rope["full_attention"]["rope_theta"]
        assert cfg.layer_types == ["sliding_attention", "full_attention"] and cfg.sliding_window == 16
        assert "model.layers.0.self_attn.q_norm.weight" in tensors and kv < heads
        assert cfg.vocab_size > len(tok), "embedding rows beyond the tokenizer, as Gemma 3's"
    elif name == "phi3":
        assert cfg.architectures == ["Phi3ForCausalLM"] and path.name.startswith("phi3")
        rope = cfg.rope_parameters
        assert rope["rope_type"] == "longrope"
        assert len(rope["short_factor"]) == len(rope["long_factor"]) == head_dim // 2
        assert cfg.original_max_position_embeddings < cfg.max_position_embeddings
        q, k, v = heads * head_dim, kv * head_dim, kv * head_dim
        assert tensors["model.layers.0.self_attn.qkv_proj.weight"][1] == [q + k + v, cfg.hidden_size]
        assert tensors["model.layers.0.mlp.gate_up_proj.weight"][1] == [2 * cfg.intermediate_size, cfg.hidden_size]
        assert cfg.vocab_size > len(tok)
    else:  # a new family needs its features asserted here
        raise AssertionError(f"no feature checks for {name}")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_fixture_keeps_its_family_features(name, loaded):
    path, tok, model = loaded(name)
    _expect_features(name, model.config, path, tok)
    gen = json.loads((path / "generation_config.json").read_text(encoding="utf-8"))
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tok.eos_token_id in eos


def _logit_change(path: Path, ids, config_edit=None, state_edit=None) -> float:
    """Max-abs change of the logits on ``ids`` when the config or the weights are edited as a converter might."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base_cfg = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, config=base_cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(ids).logits
    if config_edit:
        cfg = copy.deepcopy(base_cfg)
        config_edit(cfg)
        model = AutoModelForCausalLM.from_pretrained(path, config=cfg, dtype=torch.float32).eval()
    if state_edit:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state_edit(state)
        model.load_state_dict(state)
    with torch.no_grad():
        return (model(ids).logits - ref).abs().max().item()


def _set(**values):
    def edit(cfg):
        for key, value in values.items():
            setattr(cfg, key, value)
    return edit


def _rope(path: tuple, value):
    def edit(cfg):
        node = cfg.rope_parameters
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _zero_qkv_bias(state):
    for key in state:
        if key.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            state[key].zero_()


# (family, what a careless converter would drop, edit, tokens). F16 rounding moves these logits by about 0.01.
FEATURES = [
    ("llama", "llama3 rope scaling", dict(config_edit=_rope(("rope_type",), "default")), None),
    ("qwen2", "q/k/v biases", dict(state_edit=_zero_qkv_bias), None),
    ("gemma2", "final logit softcap", dict(config_edit=_set(final_logit_softcapping=None)), None),
    ("gemma2", "attention softcap", dict(config_edit=_set(attn_logit_softcapping=None)), None),
    ("gemma2", "sliding window", dict(config_edit=_set(sliding_window=4096)), None),
    ("gemma3", "local rope base", dict(config_edit=_rope(("sliding_attention", "rope_theta"), 1e6)), None),
    ("phi3", "longrope short factors", dict(config_edit=_rope(("short_factor",), [1.0] * 12)), 48),
    ("phi3", "longrope long factors", dict(config_edit=_rope(("long_factor",), [1.0] * 12)), None),
]


@pytest.mark.parametrize("name,feature,edits,limit", FEATURES, ids=[f"{f[0]}:{f[1]}" for f in FEATURES])
def test_distinguishing_features_move_the_logits(name, feature, edits, limit, loaded):
    path, tok, _ = loaded(name)
    ids = _corpus_ids(tok, limit)
    if name == "phi3":  # short factors apply up to the original context (64), long ones beyond it
        assert (ids.shape[1] <= 64) == (limit is not None)
    assert _logit_change(path, ids, **edits) > 0.1, f"dropping {feature} went unnoticed"


def test_sharpened_weights_expose_a_missing_rotary_permutation(loaded):
    """The reason for the re-init: a Q/K layout bug must dwarf F16 rounding (module docstring has the numbers)."""
    path, tok, model = loaded("llama")
    tensors = model.state_dict()
    assert 0.06 < tensors["model.layers.0.self_attn.q_proj.weight"].std().item() < 0.1
    assert 0.15 < tensors["model.embed_tokens.weight"].std().item() < 0.25
    cfg = model.config
    ids = _corpus_ids(tok)

    def to_f16(state):
        for key, value in state.items():
            if value.ndim == 2:
                state[key] = value.half().float()

    def unpermuted(state):
        for key in state:
            if key.endswith("q_proj.weight"):
                state[key] = tiny_models._permute_rotary(state[key], cfg.num_attention_heads)
            elif key.endswith("k_proj.weight"):
                state[key] = tiny_models._permute_rotary(state[key], cfg.num_key_value_heads)

    f16 = _logit_change(path, ids, state_edit=to_f16)
    wrong_layout = _logit_change(path, ids, state_edit=unpermuted)
    assert f16 < 0.05
    assert wrong_layout > 1.0 and wrong_layout > 50 * f16


@pytest.mark.parametrize("name", SPM_FAMILIES)
def test_sentencepiece_and_transformers_tokenize_alike(name, loaded):
    import sentencepiece as spm

    path, tok, _ = loaded(name)
    assert (path / "tokenizer.model").is_file()
    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    spec = FAMILIES[name].tokenizer
    assert sp.get_piece_size() == spec["vocab_size"]
    assert len(tok) == sp.get_piece_size() + len(spec["added"])
    samples = [MIXED_TEXT, "a  b   c", "x\ty\nz", "3.14159 and 1234567", "東京 你好 🙂🚀", "naïve café", "end  "]
    for text in samples:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text
        assert tok.decode(sp.encode(text)) == text


@pytest.mark.parametrize("name", ["qwen3", "phi3"])
def test_building_is_deterministic(name, tiny_model, tmp_path):
    cached = tiny_model(name)
    fresh = tiny_models.build(name, tmp_path)
    assert fresh.name == cached.name
    for file in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        digest = [hashlib.sha256((d / file).read_bytes()).hexdigest() for d in (cached, fresh)]
        assert digest[0] == digest[1], file


def test_cache_reuses_a_fixture_and_a_changed_definition_gets_its_own(tiny_model, tiny_model_root, tmp_path,
                                                                       monkeypatch):
    first = tiny_model("llama")
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def rebuild(*args, **kwargs):
        raise AssertionError("a cached fixture was rebuilt")

    with monkeypatch.context() as patch:
        patch.setattr(tiny_models, "_materialize", rebuild)
        assert tiny_models.build("llama", tiny_model_root) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

    llama = FAMILIES["llama"]
    changed = dataclasses.replace(llama, config={**llama.config, "rms_norm_eps": 1e-6})
    retemplated = dataclasses.replace(llama, chat_template=llama.chat_template + "\n")
    names = {tiny_models.fixture_path(f, tiny_model_root).name for f in (llama, changed, retemplated)}
    assert len(names) == 3 and all(n.startswith("llama-") for n in names)

    built = tiny_models.build(changed, tmp_path)
    assert built == tiny_models.fixture_path(changed, tmp_path)
    assert json.loads((built / "config.json").read_text())["rms_norm_eps"] == 1e-6
    assert first.is_dir() and (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_concurrent_builds_make_one_complete_fixture(tmp_path, monkeypatch):
    real = tiny_models._materialize
    calls = []

    def counting(family, out):
        calls.append(out)
        real(family, out)

    monkeypatch.setattr(tiny_models, "_materialize", counting)
    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(lambda _: tiny_models.build("qwen2", tmp_path), range(4)))
    assert len(set(paths)) == 1 and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [paths[0].name]
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))


def test_failed_build_leaves_nothing_that_looks_done(tmp_path, monkeypatch):
    def broken(family, out, tok_info):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(tiny_models, "_build_model", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            tiny_models.build("gemma2", tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    # A build killed mid-way (SIGKILL: no cleanup ran) leaves a hidden .partial; the next build clears it.
    final = tiny_models.fixture_path("gemma2", tmp_path)
    stale = tmp_path / f".{final.name}.killed.partial"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    assert tiny_models.build("gemma2", tmp_path) == final and (final / "model.safetensors").is_file()
    assert not stale.exists()


def test_unknown_family_names_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="qwen2"):
        tiny_models.build("gpt-j", tmp_path)
