"""The bad-input corpus: every case runs the real CLI in a subprocess, as a user would.

A failing case must exit 2 with exactly one error line on stderr (``forge CMD: error: ...``, no traceback) that
names where the problem is (file:line, row, recipe key, flag or name) and says what to do, and must leave the
directory tree exactly as it was (no output, no partial file, no record of a push). The only other stderr lines
allowed are, for the few cases marked ``choices``, automatic choices forge announced before it found the problem
(``data_format=messages: every record has 'messages'``). Paths with spaces and non-ASCII characters are the
opposite group: they must work.

Groups (at least five cases each): data, recipe, model, modelfile (Modelfile and chat-format strings), names
(Ollama model names), ollama (garbage/5xx/404 answers from a fake server bound to 127.0.0.1), paths.
Cases fail before torch is imported wherever the command allows it, so the whole corpus runs in seconds.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("data", "recipe", "model", "modelfile", "names", "ollama", "paths")

# "what to do": the hint forge appends in parentheses, or an imperative in the message itself.
ACTION = re.compile(r"\b(use|pass|check|add|fix|remove|rerun|set|pick|give|choose|run|re-download|re-create|"
                    r"re-export|re-save|save|free|convert|drop|copy|start|list|put|write|quote|point|rephrase|"
                    r"delete|download|see|export|move|split|lower|raise|install|log in)\b|did you mean|e\.g\.|"
                    r"supported: |knows: ", re.IGNORECASE)
CHOICE_LINE = re.compile(r"^[\w.\- ]+=.*: \S")  # events.choice: "what=value: reason"


# ---------------------------------------------------------------------------------------------------------------
# Running forge and checking what it did


def forge(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    env.pop("FORGE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ollama_forge", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under ``root`` with its size and modification time."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def the_error_line(r: subprocess.CompletedProcess, command: str, allow_choices: bool = False) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(rf"forge {re.escape(command)}( [a-z-]+)?: error: ", ln)]
    assert len(errors) == 1, f"want exactly one error line, got:\n{r.stderr}"
    assert lines[-1] == errors[0], f"the error line must be the last line:\n{r.stderr}"
    others = lines[:-1]
    if allow_choices:
        assert all(CHOICE_LINE.match(ln) for ln in others), f"only announced choices may precede:\n{r.stderr}"
    else:
        assert not others, f"want exactly one line on stderr, got:\n{r.stderr}"
    return errors[0]


# ---------------------------------------------------------------------------------------------------------------
# Shared inputs



@pytest.fixture
def base_gguf(qwen2_f16_gguf) -> Path:
    return qwen2_f16_gguf


class FakeOllama(http.server.ThreadingHTTPServer):
    """Answers every request by the first path segment of its URL (``--host 127.0.0.1:PORT/<mode>``):
    garbage (HTML, 200), e500 (JSON error, 500), e404 (Go's plain 404), shape (JSON of the wrong shape), empty
    (200, no body)."""

    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a) -> None:  # quiet
        pass

    def _answer(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        mode = self.path.strip("/").split("/", 1)[0]
        status, ctype, body = {
            "garbage": (200, "text/html", b"<html><body>It works!</body></html>"),
            "e500": (500, "application/json", b'{"error":"llama runner process has terminated"}'),
            "e404": (404, "text/plain", b"404 page not found"),
            "shape": (200, "application/json", b'{"version": [1], "models": "none", "message": 7, "model_info": 1}'),
            "empty": (200, "application/json", b""),
        }.get(mode, (404, "text/plain", b"404 page not found"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_DELETE = _answer


@pytest.fixture(scope="module")
def fake_ollama() -> str:
    server = FakeOllama(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@dataclasses.dataclass
class Ctx:
    work: Path  # the case's own folder (cwd of the command; snapshotted)
    model: Path  # tiny qwen2 HF directory (read-only, outside the snapshot)
    gguf: Path  # F16 GGUF (read-only, outside the snapshot)
    fake: str  # host:port of FakeOllama

    def copy_model(self, name: str = "model") -> Path:
        return Path(shutil.copytree(self.model, self.work / name))

    def copy_gguf(self, name: str = "model-f16.gguf") -> Path:
        dst = self.work / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.gguf, dst)
        return dst

    def run_dir(self) -> Path:
        """A pushable run directory: the GGUF and a Modelfile whose FROM is it (push writes nothing up front)."""
        run = self.work / "run"
        g = self.copy_gguf("run/model-f16.gguf")
        (run / "Modelfile").write_text("FROM ./model-f16.gguf\nPARAMETER stop <|im_end|>\n", encoding="utf-8")
        return run

    def write(self, name: str, text: str | bytes) -> Path:
        p = self.work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return p


@dataclasses.dataclass
class Case:
    id: str
    group: str
    build: Callable[[Ctx], list[str]]  # makes the inputs, returns the forge argv
    where: tuple[str, ...] = ()  # substrings the error line must hold (file:line, key, name...)
    output: str | None = None  # a path (relative to work) that must not exist afterwards
    choices: bool = False  # forge may announce automatic choices before failing


def jl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _parquet(ctx: Ctx, name: str, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = ctx.work / name
    pq.write_table(pa.Table.from_pylist(rows), p)
    return p


def _recipe(ctx: Ctx, text: str, name: str = "recipe.yaml") -> list[str]:
    return ["train", str(ctx.write(name, text))]


def _arch(ctx: Ctx) -> list[str]:
    d = ctx.copy_model()
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    return ["convert", str(d), "-o", "out.gguf"]


def _missing_shard(ctx: Ctx) -> list[str]:
    d = ctx.copy_model()
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    return ["convert", str(d), "-o", "out.gguf"]


def _truncated_safetensors(ctx: Ctx) -> list[str]:
    d = ctx.copy_model()
    st = d / "model.safetensors"
    with open(st, "r+b") as f:
        f.truncate(st.stat().st_size // 2)
    return ["convert", str(d), "-o", "out.gguf"]


def _no_tokenizer(ctx: Ctx) -> list[str]:
    d = ctx.copy_model()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()
    return ["convert", str(d), "-o", "out.gguf"]


def _no_config(ctx: Ctx) -> list[str]:
    d = ctx.copy_model()
    (d / "config.json").unlink()
    return ["convert", str(d), "-o", "out.gguf"]


def _broken_config(ctx: Ctx) -> list[str]:
    d = ctx.copy_model()
    (d / "config.json").write_text('{\n  "model_type": "qwen2",\n  "hidden_size": ,\n}\n')
    return ["convert", str(d), "-o", "out.gguf"]


def _truncated_gguf(ctx: Ctx, name: str = "cut.gguf") -> Path:
    data = ctx.gguf.read_bytes()
    return ctx.write(name, data[: len(data) * 2 // 3])


def _modelfile_push(ctx: Ctx, text: str) -> list[str]:
    run = ctx.run_dir()
    (run / "Modelfile").write_text(text, encoding="utf-8")
    return ["push", "mine:v1", "--modelfile", str(run / "Modelfile"), "--host", ctx.fake + "/garbage"]


CASES: list[Case] = [
    # ---- data: every format, every file type --------------------------------------------------------------------
    Case("messages-unknown-role-jsonl", "data", lambda c: ["data", "check", str(c.write("d.jsonl", jl(
        CHAT, {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}))),
        "-o", "clean.jsonl"], ("d.jsonl:2", "messages[1].role"), "clean.jsonl", choices=True),
    Case("sharegpt-unknown-from-json", "data", lambda c: ["data", "check", str(c.write("d.json", json.dumps(
        [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
         {"conversations": [{"from": "human", "value": "a"}, {"from": "wizard", "value": "c"}]}], indent=1)))],
        ("d.json:", "conversations[1].from", "wizard"), choices=True),
    Case("prompt-completion-empty-csv", "data", lambda c: ["data", "check", str(c.write(
        "d.csv", "prompt,completion\n2+2=,4\n3+3=,\n"))], ("d.csv:3", "completion", "empty"), choices=True),
    Case("alpaca-missing-output-jsonl", "data", lambda c: ["data", "check", str(c.write("d.jsonl", jl(
        {"instruction": "Add", "input": "2 and 2", "output": "4"}, {"instruction": "Sub", "input": "3 and 1"})))],
        ("d.jsonl:2", "output", "missing"), choices=True),
    Case("text-null-parquet", "data", lambda c: ["data", "check", str(_parquet(c, "d.parquet", [
        {"text": "Once upon a time."}, {"text": None}]))], ("d.parquet:row 1", "text", "null"), choices=True),
    Case("preference-identical-jsonl", "data", lambda c: ["data", "check", str(c.write("d.jsonl", jl(
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
        {"prompt": "Say yo", "chosen": "Yo!", "rejected": "Yo!"})))], ("d.jsonl:2", "rejected", "identical"),
        choices=True),
    Case("jsonl-invalid-json-line", "data", lambda c: ["data", "check", str(c.write("d.jsonl", jl(
        CHAT, '{"messages": [}')))], ("d.jsonl:2", "invalid JSON"), choices=True),
    Case("json-array-syntax-error", "data", lambda c: ["data", "check", str(c.write(
        "d.json", '[\n  {"text": "a"},\n  {"text": "b",}\n]\n'))], ("d.json:3", "invalid JSON"), choices=True),
    Case("json-nested-too-deep", "data", lambda c: ["data", "check", str(c.write(
        "d.jsonl", jl(CHAT, "[" * 50000 + "]" * 50000)))], ("d.jsonl:2", "nested too deeply"), choices=True),
    Case("csv-wrong-column-count", "data", lambda c: ["data", "check", str(c.write(
        "d.csv", "prompt,completion\na,b\nc,d,e\n"))], ("d.csv:3", "columns"), choices=True),
    Case("parquet-not-parquet", "data", lambda c: ["data", "check", str(c.write("d.parquet", b"PAR1 not really"))],
         ("d.parquet", "Parquet")),
    Case("jsonl-not-utf8", "data", lambda c: ["data", "check", str(c.write(
        "d.jsonl", jl(CHAT).encode() + b'{"text": "caf\xe9"}\n'))], ("d.jsonl:2", "UTF-8"), choices=True),
    Case("empty-file", "data", lambda c: ["data", "check", str(c.write("d.jsonl", "\n\n"))], ("d.jsonl", "empty")),
    Case("unknown-extension", "data", lambda c: ["data", "check", str(c.write("d.txt", "hello\n"))],
         ("d.txt", ".txt")),
    Case("no-known-format", "data", lambda c: ["data", "check", str(c.write("d.jsonl", jl(
        {"question": "a", "answer": "b"})))], ("d.jsonl:1", "format")),
    Case("format-flag-mismatch", "data", lambda c: ["data", "check", "--format", "preference", str(c.write(
        "d.jsonl", jl(CHAT)))], ("d.jsonl:1", "chosen", "missing"), choices=True),
    # ---- recipes -------------------------------------------------------------------------------------------------
    Case("recipe-wrong-type", "recipe", lambda c: _recipe(c, "base_model: m\ntrain:\n  rank: sixteen\n"),
         ("recipe.yaml", "train.rank", "integer")),
    Case("recipe-unknown-top-key", "recipe", lambda c: _recipe(c, "base_model: m\ntrian:\n  rank: 8\n"),
         ("recipe.yaml", "trian", "did you mean 'train'")),
    Case("recipe-unknown-nested-key", "recipe", lambda c: _recipe(
        c, "base_model: m\ntrain:\n  learnin_rate: 1e-4\n"), ("train.learnin_rate", "learning_rate")),
    Case("recipe-list-not-mapping", "recipe", lambda c: _recipe(c, "- base_model: m\n- train: {}\n"),
         ("recipe.yaml", "mapping")),
    Case("recipe-section-not-mapping", "recipe", lambda c: _recipe(c, "base_model: m\ntrain: 5\n"),
         ("recipe.yaml", "train", "mapping")),
    Case("recipe-bad-yaml", "recipe", lambda c: _recipe(c, "base_model: m\ntrain:\n  rank: [8\n  alpha: 16\n"),
         ("recipe.yaml:", "invalid YAML")),
    Case("recipe-packing-without-padding-free", "recipe", lambda c: _recipe(
        c, "base_model: m\ntrain:\n  packing: true\n  padding_free: false\n"), ("train.packing",)),
    Case("recipe-eval-and-eval-split", "recipe", lambda c: _recipe(
        c, "base_model: m\ndata:\n  train: [a.jsonl]\n  eval: [b.jsonl]\n  eval_split: 0.3\n"),
        ("data.eval_split",)),
    Case("recipe-dpo-without-data", "recipe", lambda c: _recipe(c, "base_model: m\ndpo:\n  beta: 0.2\n"),
         ("dpo.data",)),
    Case("recipe-no-steps", "recipe", lambda c: _recipe(c, "base_model: m\ntrain:\n  epochs: 0\n"),
         ("train.epochs", "max_steps")),
    Case("recipe-bad-ollama-name", "recipe", lambda c: _recipe(c, "base_model: m\nollama:\n  model: My Model\n"),
         ("ollama.model", "My Model")),
    Case("recipe-set-unknown-key", "recipe", lambda c: _recipe(c, "base_model: m\n") + ["--set", "train.rnak=8"],
         ("train.rnak", "rank")),
    Case("recipe-not-utf8", "recipe", lambda c: ["train", str(c.write("recipe.yaml", b"base_model: caf\xe9\n"))],
         ("recipe.yaml", "UTF-8")),
    # ---- model directories and GGUF files ----------------------------------------------------------------------
    Case("model-no-config", "model", _no_config, ("model", "config.json"), "out.gguf"),
    Case("model-config-not-json", "model", _broken_config, ("config.json:3", "JSON"), "out.gguf"),
    Case("model-no-tokenizer", "model", _no_tokenizer, ("model", "tokenizer"), "out.gguf"),
    Case("model-missing-shard", "model", _missing_shard, ("index.json", "model-00002-of-00002.safetensors"),
         "out.gguf"),
    Case("model-unsupported-arch", "model", _arch, ("config.json", "MambaForCausalLM", "not supported"),
         "out.gguf"),
    Case("model-truncated-safetensors", "model", _truncated_safetensors, ("model.safetensors", "truncated"),
         "out.gguf"),
    Case("quantize-not-gguf", "model", lambda c: ["quantize", str(c.write("w.gguf", "just text\n")),
                                                   "-o", "q.gguf"], ("w.gguf", "GGUF"), "q.gguf"),
    Case("quantize-truncated-gguf", "model", lambda c: ["quantize", str(_truncated_gguf(c)), "-o", "q.gguf"],
         ("cut.gguf", "GGUF"), "q.gguf"),
    Case("modelfile-not-gguf", "model", lambda c: ["modelfile", str(c.write("w.gguf", "text\n")), "-o", "Mf"],
         ("w.gguf", "GGUF"), "Mf"),
    Case("modelfile-truncated-gguf", "model", lambda c: ["modelfile", str(_truncated_gguf(c)), "-o", "Mf"],
         ("cut.gguf", "GGUF"), "Mf"),
    Case("chat-not-gguf", "model", lambda c: ["chat", str(c.write("w.gguf", b"\x00" * 64)), "-p", "hi"],
         ("w.gguf", "GGUF")),
    Case("chat-truncated-gguf", "model", lambda c: ["chat", str(_truncated_gguf(c)), "-p", "hi"],
         ("cut.gguf", "GGUF")),
    Case("export-adapter-without-config", "model", lambda c: [
        "export", "--adapter", str(c.write("adapter/README.md", "x").parent), "--base", str(c.model),
        "-o", "e.gguf"], ("adapter", "adapter_config.json"), "e.gguf"),
    # ---- Modelfile and chat-format strings -------------------------------------------------------------------
    Case("formats-show-unknown", "modelfile", lambda c: ["formats", "show", "chatml2"], ("chatml2", "chatml")),
    Case("modelfile-unknown-chat-format", "modelfile", lambda c: [
        "modelfile", str(c.copy_gguf()), "--chat-format", "vicuna", "-o", "Mf"], ("vicuna",), "Mf"),
    Case("modelfile-unknown-param", "modelfile", lambda c: [
        "modelfile", str(c.copy_gguf()), "--param", "temprature=0.7", "-o", "Mf"], ("temprature", "temperature"),
        "Mf"),
    Case("modelfile-param-not-a-number", "modelfile", lambda c: [
        "modelfile", str(c.copy_gguf()), "--param", "temperature=hot", "-o", "Mf"], ("temperature", "'hot'"), "Mf"),
    Case("modelfile-param-not-an-int", "modelfile", lambda c: [
        "modelfile", str(c.copy_gguf()), "--param", "num_ctx=4k", "-o", "Mf"], ("num_ctx", "'4k'"), "Mf"),
    Case("modelfile-system-unprintable", "modelfile", lambda c: [
        "modelfile", str(c.copy_gguf()), "--system", "be \x07 nice", "-o", "Mf"], ("SYSTEM", "U+0007"), "Mf"),
    Case("modelfile-unknown-command", "modelfile", lambda c: _modelfile_push(
        c, "FROM ./model-f16.gguf\nPARAMETER temperature 0.5\nTEMPLAT {{ .Prompt }}\n"),
        ("Modelfile:3", "TEMPLAT")),
    Case("modelfile-param-int-is-float", "modelfile", lambda c: _modelfile_push(
        c, "FROM ./model-f16.gguf\nPARAMETER top_k 1.5\n"), ("Modelfile:2", "top_k")),
    Case("modelfile-unterminated-quote", "modelfile", lambda c: _modelfile_push(
        c, 'FROM ./model-f16.gguf\nSYSTEM """never\nclosed\n'), ("Modelfile:2", "unterminated")),
    Case("modelfile-bad-message-role", "modelfile", lambda c: _modelfile_push(
        c, "FROM ./model-f16.gguf\nMESSAGE wizard hello\n"), ("Modelfile:2", "wizard")),
    # ---- Ollama names: refused before anything is written (push would otherwise write a Modelfile) --------------
    *[Case(f"push-name-{i}", "names", (lambda n: lambda c: ["push", n, "--gguf", str(c.copy_gguf()), "--host",
                                                            c.fake + "/garbage"])(name),
           (repr(name)[1:-1][:40], why), "model-f16.Modelfile")
      for i, (name, why) in enumerate([
          ("my model:v1", "' '"), ("mymodel:", "tag is empty"), (":v1", "model is empty"),
          ("modèle:v1", "'è'"), ("a" * 81 + ":v1", "81 characters"), ("host/ns/m/extra:v1", "host"),
          (".lead:v1", "must start with")], start=1)],
    # ---- Ollama answering something that is not Ollama's API ---------------------------------------------------
    Case("push-to-html-server", "ollama", lambda c: [
        "push", "mine:v1", str(c.run_dir()), "--host", c.fake + "/garbage"], ("/garbage", "Ollama server")),
    Case("push-to-5xx", "ollama", lambda c: [
        "push", "mine:v1", str(c.run_dir()), "--host", c.fake + "/e500"], ("/e500", "HTTP 500", "rerun")),
    Case("push-rollback-empty-body", "ollama", lambda c: [
        "push", "--rollback", "mine:v1", "--host", c.fake + "/empty"], ("/empty",)),
    Case("chat-to-404", "ollama", lambda c: ["chat", "mine:v1", "-p", "hi", "--host", c.fake + "/e404"],
         ("mine:v1", "404"), choices=True),
    Case("chat-to-wrong-json", "ollama", lambda c: ["chat", "mine:v1", "-p", "hi", "--host", c.fake + "/shape"],
         ("/shape", "chat with mine:v1"), choices=True),
    Case("models-to-wrong-json", "ollama", lambda c: ["models", "--host", c.fake + "/shape"],
         ("/shape", "model list")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, tmp_path, tiny_model, base_gguf, fake_ollama):
    work = tmp_path / "work"
    work.mkdir()
    ctx = Ctx(work, tiny_model("qwen2"), base_gguf, fake_ollama)
    argv = case.build(ctx)
    before = snapshot(tmp_path)
    r = forge(argv, cwd=work)
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    command = argv[0] if argv[0] != "--debug" else argv[1]
    line = the_error_line(r, command, allow_choices=case.choices)
    for where in case.where:
        assert where in line, f"{where!r} not named in: {line}"
    assert ACTION.search(line.split(": error: ", 1)[1]), f"does not say what to do: {line}"
    assert snapshot(tmp_path) == before, "a failed command changed the directory tree"
    if case.output:
        assert not (work / case.output).exists()


def test_corpus_size_per_group():
    counts = {g: sum(c.group == g for c in CASES) for g in GROUPS}
    assert all(counts[g] >= 5 for g in GROUPS if g != "paths"), counts
    assert len(CASES) + len(PATH_CASES) >= 40
    assert len(PATH_CASES) >= 5


def test_debug_shows_the_traceback_the_one_line_hides(tmp_path):
    """The one line is a presentation: with --debug the same failure raises with its traceback."""
    bad = tmp_path / "d.jsonl"
    bad.write_text("\n")
    r = forge(["--debug", "data", "check", str(bad)], cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ForgeError" in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# Paths with spaces and non-ASCII characters: these must work.

ODD = "dir with spaces/dätä ✓ ü"


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr and ": error:" not in r.stderr, r.stderr


def _path_data_jsonl(ctx: Ctx) -> None:
    src = ctx.write(f"{ODD}/träin ✓.jsonl", jl({"messages": [{"role": "user", "content": "héllo ✓"},
                                                             {"role": "assistant", "content": "wörld 世界"}]}))
    out = ctx.work / ODD / "out ü" / "clean ✓.jsonl"
    _ok(forge(["data", "check", str(src), "-o", str(out)], cwd=ctx.work))
    assert json.loads(out.read_text(encoding="utf-8"))["messages"][1]["content"] == "wörld 世界"


def _path_data_csv_parquet(ctx: Ctx) -> None:
    (ctx.work / ODD).mkdir(parents=True)
    csv = ctx.write(f"{ODD}/prömpts ✓.csv", "prompt,completion\nçava?,oui ✓\n")
    pq = _parquet(ctx, f"{ODD}/téxt ✓.parquet", [{"text": "naïve café"}])
    for src in (csv, pq):
        r = forge(["data", "check", str(src), "--json"], cwd=ctx.work)
        _ok(r)
        assert json.loads(r.stdout)["valid"] == 1


def _path_convert(ctx: Ctx) -> None:
    src = shutil.copytree(ctx.model, ctx.work / ODD / "módel ✓")
    out = ctx.work / ODD / "gguf ü" / "mödel f16.gguf"
    _ok(forge(["convert", str(src), "-o", str(out)], cwd=ctx.work))
    assert out.read_bytes()[:4] == b"GGUF"


def _path_quantize(ctx: Ctx) -> None:
    src = ctx.copy_gguf(f"{ODD}/mödel f16.gguf")
    out = ctx.work / ODD / "q ✓" / "mödel q8.gguf"
    _ok(forge(["quantize", str(src), "--type", "Q8_0", "-o", str(out)], cwd=ctx.work))
    assert out.read_bytes()[:4] == b"GGUF" and (out.parent / "logs" / f"{out.name}.quantize.log").is_file()


def _path_modelfile(ctx: Ctx) -> None:
    from ollama_forge import modelfile

    src = ctx.copy_gguf(f"{ODD}/mödel f16.gguf")
    out = ctx.work / ODD / "Modelfile ü"
    _ok(forge(["modelfile", str(src), "--system", "Réponds en français ✓", "-o", str(out)], cwd=ctx.work))
    mf = modelfile.read(out)
    assert (out.parent / mf.from_).resolve() == src.resolve() and mf.system == "Réponds en français ✓"


def _path_formats_detect(ctx: Ctx) -> None:
    tpl = ctx.write(f"{ODD}/chat témplate ✓.jinja", (ctx.model / "chat_template.jinja").read_text())
    r = forge(["formats", "detect", str(tpl)], cwd=ctx.work)
    _ok(r)
    assert r.stdout.startswith("chatml")


def _path_push(ctx: Ctx) -> None:
    from tests.ollama_standin import testing

    run = ctx.copy_gguf(f"{ODD}/rün ✓/model-f16.gguf").parent
    url = testing.standin().url
    name = f"forge-bad-inputs-{os.getpid()}:v1"
    r = forge(["push", name, str(run), "--host", url], cwd=ctx.work)
    _ok(r)
    assert (run / "Modelfile").is_file() and json.loads((run / "lineage.json").read_text())["ollama_name"] == name
    import ollama

    ollama.Client(url).delete(name)


PATH_CASES = {"data-jsonl": _path_data_jsonl, "data-csv-parquet": _path_data_csv_parquet,
              "convert": _path_convert, "quantize": _path_quantize, "modelfile": _path_modelfile,
              "formats-detect": _path_formats_detect, "push": _path_push}


@pytest.mark.parametrize("which", list(PATH_CASES))
def test_paths_with_spaces_and_unicode_work(which, tmp_path, tiny_model, base_gguf, fake_ollama):
    work = tmp_path / "wörk dir"
    work.mkdir()
    PATH_CASES[which](Ctx(work, tiny_model("qwen2"), base_gguf, fake_ollama))
