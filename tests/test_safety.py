"""Safety: no remote code unless the recipe asks (and then loudly), no shell strings, loopback-only servers, and
files written only where the user pointed.

The scans read the source with ``ast`` (not grep), so a comment or a docstring cannot hide or fake a hit; each scan
is also run on a planted bad snippet to prove it can fail.
"""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ollama_forge"
SERVER_CODE = [PACKAGE, REPO / "tests" / "ollama_standin"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def sources(*roots: Path) -> list[Path]:
    return sorted(p for r in roots for p in r.rglob("*.py") if "__pycache__" not in p.parts)


def _name(node: ast.AST) -> str:
    """Dotted name of a call target: os.system, subprocess.run, self.http.get -> 'self.http.get'."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


# ---------------------------------------------------------------------------------------------------------------
# trust_remote_code


def remote_code_problems(tree: ast.AST, where: str) -> list[str]:
    """Every place that sets trust_remote_code to anything but the recipe's field or False."""
    out = []

    def ok(value: ast.AST) -> bool:
        return (isinstance(value, ast.Constant) and value.value is False) or \
            (isinstance(value, ast.Attribute) and value.attr == "trust_remote_code")

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not ok(node.value):
            out.append(f"{where}:{node.value.lineno}: trust_remote_code={ast.unparse(node.value)}")
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and not ok(v):
                    out.append(f"{where}:{v.lineno}: 'trust_remote_code': {ast.unparse(v)}")
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and node.slice.value == "trust_remote_code":
            parent_assign = [a for a in ast.walk(tree) if isinstance(a, ast.Assign) and node in a.targets]
            for a in parent_assign:
                if not ok(a.value):
                    out.append(f"{where}:{a.lineno}: [...trust_remote_code] = {ast.unparse(a.value)}")
    return out


def test_trust_remote_code_only_ever_comes_from_the_recipe():
    problems, uses = [], 0
    for p in sources(PACKAGE):
        text = p.read_text(encoding="utf-8")
        uses += text.count("trust_remote_code=recipe.trust_remote_code") + \
            text.count('"trust_remote_code": recipe.trust_remote_code')
        problems += remote_code_problems(ast.parse(text), str(p.relative_to(REPO)))
    assert not problems, problems
    assert uses >= 2, "the training loaders pass the recipe's flag through"
    from ollama_forge.recipe import Recipe

    assert Recipe().trust_remote_code is False


def test_the_remote_code_scan_can_fail():
    bad = ast.parse("AutoModel.from_pretrained(x, trust_remote_code=True)\nkw = {'trust_remote_code': 1}\n"
                    "kw['trust_remote_code'] = True\nok(trust_remote_code=recipe.trust_remote_code)\n")
    assert len(remote_code_problems(bad, "x.py")) == 3




def test_loading_passes_the_flag_and_warns_loudly_only_when_the_recipe_sets_it(tiny_model, monkeypatch, forge_log):
    import transformers

    from ollama_forge import recipe as R
    from ollama_forge.train import common

    seen: list[dict] = []

    def fake_tokenizer(name, **kw):
        seen.append({"what": "tokenizer", **kw})
        return "tok"

    def fake_model(name, **kw):
        seen.append({"what": "model", **kw})
        raise RuntimeError("stop after the call")  # the arguments are what this test is about

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(common, "_REMOTE_CODE_WARNED", set())
    base = str(tiny_model("qwen2"))

    class Plan:  # the fields load_model reads
        torch_dtype = None
        quantize_4bit = False

    events = []
    for flag in (False, True):
        forge_log.clear()
        rec = R.from_dict({"base_model": base, "trust_remote_code": flag})
        common.load_tokenizer(rec, base)
        with pytest.raises(RuntimeError):
            common.load_model(rec, base, Plan(), sink=events.append)
        warnings = [r for r in forge_log.records if r.levelno >= logging.WARNING and "trust_remote_code" in
                    r.getMessage()]
        if flag:
            assert len(warnings) == 1 and "ON" in warnings[0].getMessage() and base in warnings[0].getMessage()
        else:
            assert not warnings
    assert [s["trust_remote_code"] for s in seen] == [False, False, True, True]
    assert [e.data.get("level") for e in events] == ["warning"] and "trust_remote_code is ON" in events[0].message


# ---------------------------------------------------------------------------------------------------------------
# No shell strings


SUBPROCESS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
              "subprocess.check_output", "asyncio.create_subprocess_exec"}
FORBIDDEN = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
             "asyncio.create_subprocess_shell", "pty.spawn", "commands.getoutput"}


def shell_problems(tree: ast.AST, where: str) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in FORBIDDEN or name.startswith(("os.exec", "os.spawn")):
            out.append(f"{where}:{node.lineno}: {name}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                out.append(f"{where}:{node.lineno}: shell={ast.unparse(kw.value)}")
        if name in SUBPROCESS and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            out.append(f"{where}:{node.lineno}: {name} with a command string")
    return out


def test_no_shell_anywhere_in_forge_or_the_standin():
    problems, calls = [], 0
    for p in sources(*SERVER_CODE):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        problems += shell_problems(tree, str(p.relative_to(REPO)))
        calls += sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call) and _name(n.func) in SUBPROCESS)
    assert not problems, problems
    assert calls >= 1, "the scan sees forge's subprocess calls (llama_child), all with argument lists"


def test_the_shell_scan_can_fail():
    bad = ast.parse("import os, subprocess\nos.system('ls ' + x)\nsubprocess.run(f'ls {x}')\n"
                    "subprocess.run(['ls', x], shell=True)\nos.popen('x')\nsubprocess.run(['ls', x])\n")
    assert len(shell_problems(bad, "x.py")) == 4


# ---------------------------------------------------------------------------------------------------------------
# Servers bind to loopback only


SERVER_CALLS = {"HTTPServer", "ThreadingHTTPServer", "TCPServer", "ThreadingTCPServer", "StandinServer",
                "create_server", "start_server", "serve", "run_simple", "bind", "uvicorn.run"}


def bind_problems(tree: ast.AST, where: str) -> list[str]:
    """Server starts whose address is not a loopback literal (or a parameter defaulting to one)."""
    defaults: dict[str, object] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = fn.args.args + fn.args.kwonlyargs
            vals = [None] * (len(fn.args.args) - len(fn.args.defaults)) + list(fn.args.defaults) + \
                list(fn.args.kw_defaults)
            for a, d in zip(args, vals):
                if isinstance(d, ast.Constant):
                    defaults[a.arg] = d.value
        if isinstance(fn, ast.Call) and _name(fn.func).endswith("add_argument") and \
                any(isinstance(a, ast.Constant) and a.value == "--host" for a in fn.args):
            for kw in fn.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant):
                    defaults["args.host"] = kw.value.value
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _name(node.func).split(".")[-1] not in SERVER_CALLS:
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if _name(node.func).split(".")[-1] in ("serve", "run_simple", "uvicorn.run", "run"):
            addr = kw.get("host")  # serve(store, port, host=...): unset means the function's own default, checked
        else:  # where that function builds its server
            addr = node.args[0] if node.args else kw.get("server_address", kw.get("address"))
        if isinstance(addr, ast.Tuple) and addr.elts:
            addr = addr.elts[0]
        if addr is None:
            continue
        host = addr.value if isinstance(addr, ast.Constant) else defaults.get(_name(addr))
        if host not in LOOPBACK:
            out.append(f"{where}:{node.lineno}: {ast.unparse(node)[:80]} binds {host!r}")
    return out


def test_every_server_binds_loopback_by_default():
    problems = []
    for p in sources(*SERVER_CODE):
        problems += bind_problems(ast.parse(p.read_text(encoding="utf-8")), str(p.relative_to(REPO)))
    assert not problems, problems


def test_the_bind_scan_can_fail():
    bad = ast.parse("ThreadingHTTPServer(('0.0.0.0', 0), H)\nsock.bind(('', 80))\n"
                    "def serve(d, host='0.0.0.0'):\n    return StandinServer((host, 0), d)\n"
                    "ThreadingHTTPServer(('127.0.0.1', 0), H)\n")
    assert len(bind_problems(bad, "x.py")) == 3


def test_the_standin_is_bound_to_127_0_0_1():
    from tests.ollama_standin import testing

    server = testing.standin()
    assert server.socket.getsockname()[0] == "127.0.0.1"
    assert server.url.startswith("http://127.0.0.1:")


def test_the_standin_command_line_binds_127_0_0_1(tmp_path):
    """``python -m tests.ollama_standin --port 0``: the listening socket's address, read from /proc/net/tcp."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.ollama_standin", "--port", "0", "--store", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        port = int(line.split("listening on http://127.0.0.1:")[1].split()[0])
        listening = _listening_addresses(port)
        assert listening == {"127.0.0.1"}, listening
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (Linux /proc/net/tcp and tcp6)."""
    import ipaddress

    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            hexaddr, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            raw = bytes.fromhex(hexaddr)
            # /proc stores each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out.add(str(ipaddress.ip_address(raw)))
    if not out:
        pytest.fail(f"no listening socket on port {port} found in /proc/net")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Files go only where the user pointed


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_commands_write_only_their_outputs(tiny_model, tmp_path):
    """convert, quantize, modelfile and data check, run from an empty directory with HOME and TMPDIR of their own:
    the only new files are the outputs named on the command line (and quantize's log beside its output)."""
    src, cwd, home, tmp = (tmp_path / n for n in ("src", "cwd", "home", "tmp"))
    for d in (src, cwd, home, tmp):
        d.mkdir()
    (src / "d.jsonl").write_text('{"text": "hello"}\n')
    model = tiny_model("qwen2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "XDG_CACHE_HOME": str(home / ".cache")}
    out = tmp_path / "out"
    steps = [
        (["convert", str(model), "-o", str(out / "m.gguf")], {"m.gguf"}),
        (["quantize", str(out / "m.gguf"), "--type", "Q8_0", "-o", str(out / "q.gguf")],
         {"q.gguf", "logs", "logs/q.gguf.quantize.log"}),
        (["modelfile", str(out / "q.gguf"), "-o", str(out / "Modelfile")], {"Modelfile"}),
        (["data", "check", str(src / "d.jsonl"), "-o", str(out / "clean.jsonl")], {"clean.jsonl"}),
    ]
    model_before = _tree(model)
    made: set[str] = set()
    for argv, new in steps:
        r = subprocess.run([sys.executable, "-m", "ollama_forge", *argv], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        made |= new
        assert _tree(out) == made, (argv[0], _tree(out) ^ made)
        assert not _tree(cwd) and not _tree(tmp) and not _tree(home), (argv[0], _tree(cwd), _tree(tmp), _tree(home))
        assert _tree(src) == {"d.jsonl"} and _tree(model) == model_before
