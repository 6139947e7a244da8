"""What the TUI shows, computed without any UI: runs and their state, recipe form fields, data previews, report
tables, and the folding of a stage's events into a status a screen can draw.

The TUI (``ollama_forge/tui``) only lays these out and runs library stages in workers; everything here is plain
Python over the run directory's files (``runs.RunDir``) and the recipe dataclasses, testable without a terminal.
Nothing heavy is imported at module level (and never textual).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

from .errors import ForgeError
from .events import Event

# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------

# Manifest stage names (runs.RunDir.record) in chain order, with the state a run is in once that stage is done.
STAGE_STATES = [
    ("data", "data checked"), ("train-sft", "trained (sft)"), ("sft", "trained (sft)"),
    ("train-dpo", "trained (dpo)"), ("dpo", "trained (dpo)"), ("merge", "merged"), ("convert", "converted"),
    ("quantize", "quantized"), ("modelfile", "exported"), ("gate", "gated"), ("push", "pushed"),
    ("eval", "evaluated"),
]


@dataclasses.dataclass
class RunInfo:
    path: Path
    name: str
    state: str
    base_model: str
    last_metric: str
    stages: list[str]  # manifest stages recorded, in chain order
    ggufs: list[str]  # model-*.gguf names
    updated: float  # newest mtime of the run's records (sorting only; never shown)

    @property
    def short_base(self) -> str:
        return short_model(self.base_model)


def short_model(ref: str) -> str:
    """A model reference as a person reads it: a Hub id as is, a local directory by its last parts."""
    if not ref:
        return "-"
    p = Path(ref)
    if p.is_absolute() or ref.startswith((".", "~")):
        parts = [x for x in p.parts if x not in ("/", "")]
        if "snapshots" in parts:  # HF cache: models--org--name/snapshots/<rev>
            i = parts.index("snapshots")
            if i > 0 and parts[i - 1].startswith("models--"):
                return parts[i - 1][len("models--"):].replace("--", "/")
        return parts[-1] if parts else ref
    return ref


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("manifest.json", "recipe.resolved.yaml"))


def checkpoint_steps(run: Path) -> list[int]:
    """Steps of the checkpoints an unfinished training stage left (what a resume starts from)."""
    steps = []
    root = run / "checkpoints"
    if root.is_dir():
        for stage in root.iterdir():
            if not stage.is_dir() or (stage / "FINISHED").is_file():  # finished: its checkpoints are history
                continue
            for ck in stage.glob("step-*"):
                try:
                    steps.append(int(ck.name.split("-", 1)[1]))
                except ValueError:
                    continue
    return sorted(steps)


def run_state(run: Path, manifest: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """(state, stages done): the furthest stage recorded in the manifest, refined by the files present."""
    from .runs import RunDir

    m = manifest if manifest is not None else RunDir(run).manifest()
    recorded = {k.split("-")[0] if k.startswith("quantize-") else k for k in (m.get("stages") or {})}
    stages = [s for s, _ in STAGE_STATES if s in recorded]
    state = "new"
    for stage, label in STAGE_STATES:
        if stage in recorded:
            state = label
    has_adapter = (run / "adapter").is_dir() and any((run / "adapter").glob("adapter_*"))
    files_state = None
    if (run / "eval" / "eval.json").is_file():
        files_state = "evaluated"
    elif (run / "lineage.json").is_file():
        files_state = "pushed"
    elif fidelity_path(run) is not None:
        gate = _read_json(fidelity_path(run)) or {}
        files_state = "gated" if gate.get("passed") else "gate failed"
    elif any(run.glob("model-q*.gguf")):
        files_state = "quantized"
    elif any(run.glob("model-*.gguf")):
        files_state = "converted"
    elif has_adapter:
        files_state = "trained"
    order = [label for _, label in STAGE_STATES] + ["gate failed"]
    rank = {label: i for i, label in enumerate(order)}
    rank.update({"trained": rank["trained (sft)"], "new": -1})
    if files_state and rank.get(files_state, -1) > rank.get(state, -1):
        state = files_state
    steps = checkpoint_steps(run)
    if steps and rank.get(state, -1) < rank["trained (sft)"]:
        state = f"stopped at step {steps[-1]}"
    return state, stages


def last_metric(run: Path) -> str:
    """The run's latest figure: the primary eval metric of its last model, else the last training loss."""
    ev = _read_json(run / "eval" / "eval.json")
    if isinstance(ev, dict) and ev.get("models"):
        metric = ev.get("metric") or "rouge_l"
        m = ev["models"][-1]
        d = (m.get("summary") or {}).get(metric) or {}
        if d.get("mean") is not None:
            return f"{METRIC_NAMES.get(metric, metric)} {_pct(d['mean'])} ({m.get('label', '?')})"
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines()):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row.get("loss"), (int, float)):
                return f"loss {row['loss']:.3f} @ step {row.get('step', '?')}"
    return "-"


def run_info(path: str | os.PathLike) -> RunInfo:
    from .runs import RunDir

    run = RunDir(path)
    manifest = run.manifest()
    state, stages = run_state(run.root, manifest)
    recipe = read_yaml(run.recipe) if run.recipe.is_file() else {}
    mtimes = [p.stat().st_mtime for p in (run.manifest_path, run.recipe, run.metrics) if p.exists()]
    return RunInfo(path=run.root, name=run.root.name, state=state, base_model=str(recipe.get("base_model") or ""),
                   last_metric=last_metric(run.root), stages=stages,
                   ggufs=sorted(p.name for p in run.root.glob("model-*.gguf")), updated=max(mtimes, default=0.0))


def list_runs(root: str | os.PathLike) -> list[RunInfo]:
    """Run directories directly under ``root`` (and ``root`` itself if it is one), newest first then by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    candidates = ([root] if is_run_dir(root) else []) + sorted(p for p in root.iterdir() if is_run_dir(p))
    infos = [run_info(p) for p in candidates]
    infos.sort(key=lambda r: (-round(r.updated), r.name))
    return infos


def run_recipe(run: str | os.PathLike):
    """The run's resolved recipe as a Recipe (ForgeError when missing or invalid)."""
    from . import recipe as recipes

    path = Path(run) / "recipe.resolved.yaml"
    if not path.is_file():
        raise ForgeError(f"{run}: no recipe.resolved.yaml", "pick a run that has started, or open a recipe")
    return recipes.load(path)


def default_run_dir(recipe: Any, recipe_path: str | os.PathLike | None, runs_root: str | os.PathLike) -> Path:
    """Where a recipe's run goes: its ``run_dir``, else ``<runs root>/<recipe file stem>`` (``run`` unsaved)."""
    if getattr(recipe, "run_dir", None):
        return Path(recipe.run_dir)
    name = Path(recipe_path).stem if recipe_path else "run"
    return Path(runs_root) / name


def with_absolute_paths(recipe: Any, recipe_path: str | os.PathLike | None = None) -> Any:
    """See ``pipeline.with_absolute_paths`` (the TUI's training runs read data as ``forge run`` does)."""
    from .pipeline import with_absolute_paths as absolute

    return absolute(recipe, recipe_path)


def arena_defaults(run: str | os.PathLike | None) -> tuple[str, str]:
    """(left, right) for the arena from a run: its base model and its served GGUF (else the adapter dir)."""
    if run is None:
        return "", ""
    run = Path(run)
    recipe = read_yaml(run / "recipe.resolved.yaml") if (run / "recipe.resolved.yaml").is_file() else {}
    base = str(recipe.get("base_model") or "")
    ggufs = sorted(run.glob("model-*.gguf"), key=lambda p: (not p.name.startswith("model-q"), p.name))
    tuned = str(ggufs[0]) if ggufs else (str(run) if (run / "adapter").is_dir() else "")
    return base, tuned


# ---------------------------------------------------------------------------------------------------------------
# Models in Ollama made by forge
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ModelRow:
    name: str
    quant: str
    size: str
    chat_format: str
    base: str
    run: str
    pushed_at: str


def model_rows(models: list[dict[str, Any]]) -> list[ModelRow]:
    """``ollama.forge_models`` entries as table rows, lineage included."""
    out = []
    for m in models:
        lin = m.get("lineage") or {}
        run = m.get("run_dir") or ""
        out.append(ModelRow(name=str(m.get("name")), quant=str(m.get("quantization_level") or "-"),
                            size=human_bytes(int(m.get("size") or 0)), chat_format=str(lin.get("chat_format") or "-"),
                            base=short_model(str(lin.get("base_model") or "")),
                            run=Path(run).name if run else "-", pushed_at=str(m.get("pushed_at") or "-")))
    return out


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def human_seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


# ---------------------------------------------------------------------------------------------------------------
# Local models (base model picker)
# ---------------------------------------------------------------------------------------------------------------

def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def local_models(extra: Iterable[str | os.PathLike] = ()) -> list[tuple[str, str]]:
    """(label, value) of HF model directories: the hub cache's snapshots (value: the Hub id), then every
    directory holding a config.json directly under each ``extra`` folder (value: its path)."""
    out: list[tuple[str, str]] = []
    cache = hf_cache_dir()
    if cache.is_dir():
        for repo in sorted(cache.glob("models--*")):
            snaps = sorted((p for p in (repo / "snapshots").glob("*") if (p / "config.json").is_file()),
                           key=lambda p: p.stat().st_mtime)
            if snaps:
                hub_id = repo.name[len("models--"):].replace("--", "/")
                out.append((f"{hub_id} (HF cache)", hub_id))
    for folder in extra:
        folder = Path(folder).expanduser()
        if (folder / "config.json").is_file():
            out.append((f"{folder.name} ({folder})", str(folder)))
            continue
        if folder.is_dir():
            for d in sorted(p for p in folder.iterdir() if (p / "config.json").is_file()):
                out.append((f"{d.name} ({d})", str(d)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Data preview (the `forge data check` report, plus the first records)
# ---------------------------------------------------------------------------------------------------------------

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclasses.dataclass
class DataPreview:
    report: list[str]
    records: list[str]  # the first records, one compact line each
    ok: bool


def _record_line(rec: dict[str, Any], width: int = 200) -> str:
    if "messages" in rec:
        text = " | ".join(f"{m.get('role')}: {m.get('content')}" for m in rec["messages"])
    elif "prompt" in rec and "chosen" in rec:
        text = f"prompt: {rec['prompt']} | chosen: {rec['chosen']} | rejected: {rec.get('rejected')}"
    elif "prompt" in rec:
        text = f"prompt: {rec['prompt']} | completion: {rec.get('completion')}"
    else:
        text = json.dumps(rec, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def data_preview(paths: str | list[str], n: int = 5, fmt: str | None = None, max_problems: int = 20) -> DataPreview:
    """``load_data`` over ``paths``: the report `forge data check` prints (without token lengths) and the first
    ``n`` normalised records. A ForgeError (unreadable file, unknown format) becomes the report's one line."""
    from .data import load_data

    if isinstance(paths, str):
        paths = [paths]
    try:
        data = load_data(list(paths), fmt=fmt if fmt not in (None, "", "auto") else None)
    except ForgeError as e:
        return DataPreview([f"error: {e.one_line()}"], [], False)
    lines = [f"format: {data.format} ({data.reason})",
             f"records: {data.total} read, {len(data.records)} valid, {len(data.problems)} invalid"]
    lines += [f"normalised: {k} records: {note}" for note, k in data.notes.items()]
    lines += [str(p) for p in data.problems[:max_problems]]
    if len(data.problems) > max_problems:
        lines.append(f"... and {len(data.problems) - max_problems} more (forge data check lists every one)")
    return DataPreview(lines, [_record_line(r) for r in data.records[:n]], not data.problems)


# ---------------------------------------------------------------------------------------------------------------
# The recipe as a form
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FieldSpec:
    key: str  # dotted: "train.rank"
    section: str  # "" for top-level keys, else the dataclass field: "train"
    kind: str  # "str" | "int" | "float" | "bool" | "choice" | "list" | "dict" | "str_or_list"
    tp: Any
    default: Any
    optional: bool
    choices: tuple[str, ...]
    help: str

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]


def _kind(tp: Any) -> tuple[str, bool, tuple[str, ...]]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    optional = False
    if origin in (Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            kind, _, choices = _kind(rest[0])
            return kind, optional, choices
        return "str_or_list", optional, ()
    if origin is Literal:
        return "choice", False, tuple(str(a) for a in args)
    if origin is list:
        return "list", False, ()
    if origin is dict:
        return "dict", False, ()
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, "str"), False, ()


def recipe_sections() -> list[tuple[str, str]]:
    """(section key, help) of the recipe's nested dataclasses, in order ("" is the top level)."""
    from . import recipe as recipes

    out = [("", "model and run")]
    hints = typing.get_type_hints(recipes.Recipe)
    for f in dataclasses.fields(recipes.Recipe):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(tp) or inner:
            out.append((f.name, f.metadata.get("help", "")))
    return out


def recipe_fields() -> list[FieldSpec]:
    """Every leaf key of the recipe, generated from the dataclasses in recipe.py (so a new key shows up here)."""
    from . import recipe as recipes

    out: list[FieldSpec] = []

    def walk(cls: Any, prefix: str, section: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            if dataclasses.is_dataclass(tp) or inner:
                walk(tp if dataclasses.is_dataclass(tp) else inner[0], f"{prefix}{f.name}.", f.name)
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            kind, optional, choices = _kind(tp)
            out.append(FieldSpec(f"{prefix}{f.name}", section, kind, tp, default, optional, choices,
                                 f.metadata.get("help", "")))

    walk(recipes.Recipe, "", "")
    return out


def value_text(value: Any, spec: FieldSpec) -> str:
    """A recipe value as the form shows it: lists and mappings in YAML flow style, None as empty."""
    if value is None:
        return ""
    if spec.kind == "bool" or isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        if not value:
            return ""
        if spec.kind == "list" and all(isinstance(v, str) and v and "," not in v and v.strip() == v
                                       and v[0] not in "[{" for v in value):
            return ", ".join(value)  # parse_value reads "a, b" back as [a, b]
        import yaml

        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if isinstance(value, float):
        return repr(value) if not value.is_integer() or abs(value) >= 1e16 else f"{value:.1f}"
    return str(value)


def get_value(recipe: Any, key: str) -> Any:
    obj = recipe
    for part in key.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part)
    return obj


def form_values(recipe: Any) -> dict[str, str]:
    """Every field's text for a recipe (DPO fields show their defaults when the recipe has no DPO round)."""
    from . import recipe as recipes

    dpo_defaults = recipes.DPOConfig()
    out = {}
    for spec in recipe_fields():
        if spec.section == "dpo" and recipe.dpo is None:
            out[spec.key] = value_text(getattr(dpo_defaults, spec.name), spec)
        else:
            out[spec.key] = value_text(get_value(recipe, spec.key), spec)
    return out


def parse_value(spec: FieldSpec, text: str) -> Any:
    """The form's text for one field as the recipe value (ForgeError naming the key when it is not one)."""
    from . import recipe as recipes

    text = text.strip()
    if text == "" and spec.optional:
        return None
    if spec.kind in ("str", "choice"):
        value: Any = text
    elif spec.kind == "list" and text and text[0] not in "[{":
        value = [p.strip() for p in text.split(",") if p.strip()]  # "a.jsonl, b.jsonl" reads as a list
    elif spec.kind == "str_or_list" and text and text[0] not in "[{":
        value = text
    elif text == "":
        value = [] if spec.kind == "list" else {} if spec.kind == "dict" else ""
    else:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ForgeError(f"{spec.key}: {text!r} is not a valid value", "lists as [a, b], mappings as "
                             "{key: value}") from None
    # The recipe's own coercion, so the form accepts exactly what a YAML recipe accepts.
    return recipes._coerce(value, spec.tp, spec.key)


def check_value(spec: FieldSpec, text: str) -> str | None:
    """Why ``text`` is not a valid value for this field (the one-line error), or None."""
    try:
        parse_value(spec, text)
    except ForgeError as e:
        return e.one_line()
    return None


def recipe_from_form(values: dict[str, str], dpo: bool, source: str = "recipe"):
    """A validated Recipe from the form's texts (``recipe.from_dict``: types, then contradictions)."""
    from . import recipe as recipes

    data: dict[str, Any] = {}
    for spec in recipe_fields():
        if spec.section == "dpo" and not dpo:
            continue
        if spec.key not in values:
            continue
        value = parse_value(spec, values[spec.key])
        node = data
        parts = spec.key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if dpo:
        data.setdefault("dpo", {})
    return recipes.from_dict(data, source)


def error_field(message: str, keys: Iterable[str]) -> str | None:
    """The recipe key a validation message is about (the longest key named in it), if any."""
    hits = [k for k in keys if f" {k}:" in f" {message}" or f": {k}:" in message or f"{k}[" in message]
    return max(hits, key=len) if hits else None


def recipe_text(recipe: Any) -> str:
    from . import recipe as recipes

    return "# Written by ollama-forge (forge tui).\n" + recipes.dump_yaml(recipe)


def save_recipe(recipe: Any, path: str | os.PathLike) -> Path:
    """Write the recipe as YAML, atomically; it loads back to an equal Recipe."""
    from .atomic import write_text

    path = Path(path)
    write_text(path, recipe_text(recipe))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reports as tables
# ---------------------------------------------------------------------------------------------------------------

METRIC_NAMES = {"exact": "exact", "contains": "contains", "rouge_l": "ROUGE-L", "stop_rate": "stop rate"}


def _pct(x: float | None, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _ci(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{_pct(d['mean'])} [{_pct(d.get('low'))}, {_pct(d.get('high'))}]"


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


@dataclasses.dataclass
class Table:
    title: str
    head: list[str]
    rows: list[list[str]]
    notes: list[str]


EVAL_HEAD = ["model", "n", "ppl", "exact", "contains", "ROUGE-L", "stop rate", "tokens", "TTFT s", "tok/s"]


def eval_table(report: dict[str, Any], compact: bool = False) -> Table:
    """eval/eval.json as the table `forge eval` prints, with the paired differences as notes. ``compact`` keeps
    the columns a narrow terminal has room for: model, n, perplexity, the primary metric, stop rate, tokens/s."""
    head = list(EVAL_HEAD)
    rows = []
    for m in report.get("models") or []:
        s = m.get("summary") or {}
        ppl = s.get("perplexity")
        rows.append([str(m.get("label")), str(s.get("n", "-")), _num(ppl, ".2f") if ppl is not None else "n/a",
                     _ci(s.get("exact")), _ci(s.get("contains")), _ci(s.get("rouge_l")), _ci(s.get("stop_rate")),
                     _num(s.get("mean_tokens"), ".1f"), _num(s.get("ttft_s"), ".3f"),
                     _num(s.get("tokens_per_s"), ".0f")])
    dec = report.get("decoding") or {}
    decoding = (f"greedy, at most {dec.get('num_predict')} new tokens" if dec.get("temperature") == 0
                else ", ".join(f"{k}={v}" for k, v in dec.items()))
    metric = report.get("metric") or "rouge_l"
    title = (f"{report.get('n', len(report.get('prompts') or []))} prompts ({report.get('source') or 'given'}); "
             f"decoding {decoding}; primary metric {METRIC_NAMES.get(metric, metric)}")
    notes = []
    if report.get("overlap_with_training"):
        notes.append(f"{report['overlap_with_training']} prompts also appear in the training data")
    for c in report.get("comparisons") or []:
        mark = " *" if c.get("significant") else ""
        primary = " (primary)" if c.get("metric") == metric else ""
        notes.append(f"{c.get('label')} vs {c.get('baseline')}: {METRIC_NAMES.get(c.get('metric'), c.get('metric'))} "
                     f"{100 * c['diff']:+.1f} pts, 95% CI [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}], "
                     f"n={c.get('n')}{mark}{primary}")
    for m in report.get("models") or []:
        if (m.get("summary") or {}).get("perplexity") is None and m.get("perplexity_note"):
            notes.append(f"{m.get('label')}: no perplexity ({m['perplexity_note']})")
    if compact:
        keep = ["model", "n", "ppl", {"exact": "exact", "contains": "contains"}.get(metric, "ROUGE-L"),
                "stop rate", "tok/s"]
        idx = [head.index(k) for k in keep]
        head, rows = [head[i] for i in idx], [[r[i] for i in idx] for r in rows]
        notes.append("a wider terminal shows every metric")
    return Table(title, head, rows, notes)


def load_eval(run: str | os.PathLike) -> dict[str, Any] | None:
    data = _read_json(Path(run) / "eval" / "eval.json")
    return data if isinstance(data, dict) else None


def fidelity_table(report: dict[str, Any]) -> Table:
    """fidelity.json (the gate) as rows: hop, top-1 (min), KL mean/max, stop rate, result."""
    head = ["hop", "top-1", "min", "KL mean", "KL max", "stop rate", "result"]

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2e}"

    rows = []
    for h in report.get("hops") or []:
        if h.get("skipped"):
            rows.append([h["name"], "-", "-", "-", "-", "-", f"skipped: {h['skipped']}"])
            continue
        stop = "-" if h.get("stop_rate") is None else _pct(h["stop_rate"])
        rows.append([str(h.get("name")), _pct(h.get("top1"), 1), _pct(h.get("min_top1")), f(h.get("kl_mean")),
                     f(h.get("kl_max")), stop, "pass" if h.get("passed") else "FAIL"])
    notes = [f"{h['name']}: {'; '.join(h.get('problems') or [])} -> {h.get('likely_cause')}"
             for h in report.get("hops") or [] if not h.get("passed") and not h.get("skipped")]
    notes += list(report.get("notes") or [])
    title = (f"fidelity gate {'PASSED' if report.get('passed') else 'FAILED'}: {report.get('n_prompts', '?')} "
             "prompts")
    return Table(title, head, rows, notes)


def fidelity_path(run: str | os.PathLike) -> Path | None:
    """The gate's report: run/gate/fidelity.json (forge run), else run/fidelity.json (forge eval --fidelity)."""
    for p in (Path(run) / "gate" / "fidelity.json", Path(run) / "fidelity.json"):
        if p.is_file():
            return p
    return None


def load_fidelity(run: str | os.PathLike) -> dict[str, Any] | None:
    path = fidelity_path(run)
    data = _read_json(path) if path is not None else None
    return data if isinstance(data, dict) else None


def loss_curves(run: str | os.PathLike) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """(train loss, eval loss) per stage from the run's metrics.jsonl, as the Train screen plots them."""
    loss: dict[str, list[tuple[int, float]]] = {}
    eval_loss: dict[str, list[tuple[int, float]]] = {}
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return loss, eval_loss
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step, stage = row.get("step"), str(row.get("stage") or "sft")
        if not isinstance(step, int):
            continue
        if isinstance(row.get("loss"), (int, float)):
            loss.setdefault(stage, []).append((step, float(row["loss"])))
        if isinstance(row.get("eval_loss"), (int, float)):
            eval_loss.setdefault(stage, []).append((step, float(row["eval_loss"])))
    return loss, eval_loss


def artifact_sizes(run: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, human size) of the run's exported artifacts: adapter, merged, GGUFs, Modelfile."""
    run = Path(run)
    out = []

    def size(p: Path) -> int:
        return p.stat().st_size if p.is_file() else sum(q.stat().st_size for q in p.rglob("*") if q.is_file())

    for name in ("adapter", "merged"):
        if (run / name).is_dir():
            out.append((f"{name}/", human_bytes(size(run / name))))
    for g in sorted(run.glob("model-*.gguf")):
        out.append((g.name, human_bytes(size(g))))
    if (run / "Modelfile").is_file():
        out.append(("Modelfile", human_bytes(size(run / "Modelfile"))))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Events folded into what a screen draws
# ---------------------------------------------------------------------------------------------------------------

PIPELINE_STAGES = ("data", "sft", "dpo", "merge", "convert", "quantize", "modelfile", "gate", "push", "eval")
TRAIN_STAGES = ("sft", "dpo")


@dataclasses.dataclass
class TrainStatus:
    """A training run as the Train screen shows it, built from the stage's events."""

    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    tokens_per_s: float | None = None
    device: str = ""
    dtype: str = ""
    state: str = "idle"  # idle | running | stopping | stopped | done | failed
    loss: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)  # "sft" -> [(step, loss)]
    eval_loss: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    message: str = ""

    def apply(self, ev: Event) -> bool:
        """Fold one event in; True when something drawn changed."""
        d = ev.data
        if ev.kind == "progress" and "step" in d:
            self.stage = ev.stage or self.stage
            self.step = int(d.get("step") or 0)
            self.total = int(d.get("total") or self.total or 0)
            self.eta_s = d.get("eta_s")
            return True
        if ev.kind == "metric":
            self.stage = ev.stage or self.stage
            step = d.get("step")
            if isinstance(step, int):
                if isinstance(d.get("loss"), (int, float)):
                    self.loss.setdefault(self.stage, []).append((step, float(d["loss"])))
                if isinstance(d.get("eval_loss"), (int, float)):
                    self.eval_loss.setdefault(self.stage, []).append((step, float(d["eval_loss"])))
            if isinstance(d.get("tokens_per_s"), (int, float)):
                self.tokens_per_s = float(d["tokens_per_s"])
            return True
        if ev.kind == "choice" and d.get("what") in ("device", "dtype"):
            setattr(self, str(d["what"]), str(d.get("value")))
            return True
        if ev.kind == "stage":
            name = d.get("name") or ev.stage
            if "total" in d and "step" in d and ev.stage in TRAIN_STAGES:  # a trainer's own "training for N steps"
                self.stage, self.step, self.total = ev.stage, int(d["step"] or 0), int(d["total"] or 0)
            if ev.stage == "pipeline" and name in TRAIN_STAGES:
                if d.get("state") == "running":
                    self.stage, self.state = str(name), "running"
                elif d.get("state") in ("stopped", "failed"):
                    self.state = str(d["state"])
            self.message = ev.message
            return True
        return False

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    def line(self) -> str:
        """One status line: stage, step, ETA, tokens/s, device."""
        parts = [self.state]
        if self.stage:
            parts.append(self.stage)
        if self.total:
            parts.append(f"step {self.step}/{self.total}")
        parts.append(f"ETA {human_seconds(self.eta_s)}" if self.eta_s is not None else "ETA -")
        parts.append(f"{self.tokens_per_s:.0f} tok/s" if self.tokens_per_s else "- tok/s")
        parts.append(f"device {self.device or '-'}{'/' + self.dtype if self.dtype else ''}")
        return "  ".join(parts)


@dataclasses.dataclass
class StageRow:
    name: str
    state: str = "waiting"  # waiting | running | ran | cached | skipped | failed | stopped
    seconds: float | None = None
    bytes: int | None = None
    message: str = ""
    done: int = 0
    total: int = 0


@dataclasses.dataclass
class StageBoard:
    """A list of pipeline stages and where each stands, from the pipeline's "stage" events and progress events."""

    rows: list[StageRow]
    current: str = ""

    @classmethod
    def of(cls, names: Iterable[str]) -> "StageBoard":
        return cls([StageRow(n) for n in names])

    def row(self, name: str) -> StageRow | None:
        for r in self.rows:
            if r.name == name:
                return r
        return None

    def apply(self, ev: Event) -> bool:
        d = ev.data
        if ev.kind == "stage" and ev.stage == "pipeline" and d.get("name"):
            r = self.row(str(d["name"]))
            if r is None:
                return False
            r.state = str(d.get("state") or r.state)
            if d.get("seconds") is not None:
                r.seconds = float(d["seconds"])
            if d.get("bytes") is not None:
                r.bytes = int(d["bytes"])
            r.message = ev.message
            if r.state == "running":
                self.current, r.done, r.total = r.name, 0, 0
            return True
        if ev.kind == "progress" and self.current:
            r = self.row(self.current)
            if r is None:
                return False
            done, total = d.get("done", d.get("step")), d.get("total")
            if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total:
                r.done, r.total = int(done), int(total)
                return True
        return False

    def mark(self, name: str, state: str, message: str = "", seconds: float | None = None) -> None:
        r = self.row(name)
        if r is not None:
            r.state, r.message = state, message or r.message
            if seconds is not None:
                r.seconds = seconds

    def stop_running(self, state: str = "stopped") -> None:
        for r in self.rows:
            if r.state == "running":
                r.state = state


def event_line(ev: Event) -> str:
    """An event as one log line (no clock: the log reads the same in every run)."""
    where = ev.stage or ev.kind
    if ev.kind == "choice":
        return f"[{where}] chose {ev.message}"
    if ev.kind == "stage" and ev.stage == "pipeline":
        return ev.message  # "[2/5] sft: ran in 9.4s, 106.5 KB on disk - 6 steps, ..."
    return f"[{where}] {ev.message}"
