"""The whole chain from a recipe, cached and resumable: what ``forge run``, ``forge demo`` and the TUI drive.

Library entry point: ``run_pipeline(recipe, run_dir, sink=None, ...) -> PipelineReport``. Stages, in order::

    data       load and validate the training data and preference pairs; run/data/report.json
    sft        LoRA/QLoRA SFT (train.train_sft); resumes an interrupted run's checkpoints when inputs match
    dpo        DPO from the SFT adapter (when the recipe has a dpo section)
    merge      adapter merged into the base, run/merged/ (only when export.keep lists merged: otherwise convert
               merges while it streams, and no merged copy is ever written)
    convert    run/model-f16.gguf (and run/base/model-f16.gguf when eval.compare_base)
    quantize   run/model-q4_k_m.gguf ... one per export.quant_types, base too
    modelfile  run/Modelfile: TEMPLATE and stops of the chat format used in training
    gate       fidelity gate, hop by hop (adapter -> merged -> F16 -> quantized), gate/fidelity.json
    push       registration with Ollama, only after the gate passed and when Ollama answers
    eval       held-out prompts through the quantized base and tuned models, eval/eval.json

Caching: each stage records a manifest entry (``runs.RunDir``): input hashes, config hash, output hashes. Inputs of
a stage are the recorded output hashes of the stages it reads, so an intermediate dropped by the retention policy
(F16, merged/) does not invalidate what was made from it; a stage that needs a dropped file again (a new quant type)
rebuilds it first and says so. A rerun skips current stages ("cached: inputs unchanged").

Crash safety: outputs are written under temporary names and renamed into place, and the manifest entry is written
after the rename, so a kill at any point leaves either the old state or the finished one. One process at a time per
run directory (an advisory lock released by the kernel when the holder dies); leftovers of a killed run are removed
at the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ForgeError, Stopped
from .events import Sink, choice, emit
from .testhooks import enter_stage, kill_point

STAGE = "pipeline"
STAGES = ("data", "sft", "dpo", "merge", "convert", "quantize", "modelfile", "gate", "push", "eval")
OPTIONAL_KEEP = ("merged", "f16", "checkpoints")  # the rest (adapter, quantized GGUFs, Modelfile) are the products


@dataclasses.dataclass
class StageRecord:
    name: str
    seconds: float
    status: str  # "ran" | "cached" | "skipped" | "failed" | "stopped"
    note: str = ""
    artifacts: list[Path] = dataclasses.field(default_factory=list)
    cpu_seconds: float = 0.0  # this process's CPU time (llama.cpp's quantizer child not counted)
    size: int | None = None  # bytes on disk when the stage ended (artifacts may be dropped later by retention)

    @property
    def bytes(self) -> int:
        if self.size is not None:
            return self.size
        return sum(disk_bytes(p) for p in self.artifacts if p.exists())


@dataclasses.dataclass
class Retained:
    path: Path
    bytes: int
    kept: bool
    why: str


@dataclasses.dataclass
class PipelineReport:
    run_dir: Path
    stages: list[StageRecord]
    gate_passed: bool | None = None
    pushed: str | None = None
    push_note: str = ""
    eval: dict[str, Any] | None = None
    retention: list[Retained] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None  # why the run ended early (a stop request); None when it went to the end

    def stage(self, name: str) -> StageRecord:
        return next(s for s in self.stages if s.name == name)

    def ran(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "ran"]

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "gate_passed": self.gate_passed, "pushed": self.pushed,
                "push_note": self.push_note, "seconds": round(self.seconds, 1), "stopped": self.stopped,
                "stages": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 2),
                            "cpu_seconds": round(s.cpu_seconds, 2), "note": s.note, "bytes": s.bytes,
                            "artifacts": [str(p) for p in s.artifacts]} for s in self.stages],
                "retention": [{"path": str(r.path), "bytes": r.bytes, "kept": r.kept, "why": r.why}
                              for r in self.retention],
                "eval": _eval_summary(self.eval) if self.eval else None}


def _eval_summary(ev: dict[str, Any]) -> dict[str, Any]:
    return {"n": ev.get("n"), "metric": ev.get("metric"),
            "models": {m["label"]: m["summary"] for m in ev.get("models", [])},
            "comparisons": ev.get("comparisons", [])}


def disk_bytes(path: Path) -> int:
    """Bytes on disk of a file or a directory's files (hard links counted once)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    seen: set[tuple[int, int]] = set()
    total = 0
    for f in path.rglob("*") if path.is_dir() else []:
        st = f.stat()
        if f.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


class Runner:
    """Runs stages in order: times them, emits a ``stage`` event as each starts and ends, keeps their records."""

    def __init__(self, sink: Sink | None, names: list[str], should_stop: Callable[[], bool] | None = None):
        self.sink = sink
        self.names = names
        self.records: list[StageRecord] = []
        self.should_stop = should_stop

    def _event(self, name: str, state: str, message: str, **data: Any) -> None:
        i = self.names.index(name) + 1 if name in self.names else len(self.records) + 1
        emit(self.sink, "stage", STAGE, message, name=name, state=state, index=i, total=len(self.names), **data)

    def run(self, name: str, fn: Callable[[], tuple[str, str, list[Path]]]) -> StageRecord:
        i = self.names.index(name) + 1 if name in self.names else len(self.records) + 1
        if self.should_stop is not None and self.should_stop():
            raise Stopped(f"stopped before {name}", "run again to continue from there")
        self._event(name, "running", f"[{i}/{len(self.names)}] {name}")
        enter_stage(name)
        kill_point("stage")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            status, note, artifacts = fn()
        except Stopped as e:
            self.records.append(StageRecord(name, time.perf_counter() - t0, "stopped", e.message))
            self._event(name, "stopped", f"[{i}/{len(self.names)}] {name}: stopped - {e.message}")
            raise
        except BaseException as e:
            self.records.append(StageRecord(name, time.perf_counter() - t0, "failed", str(e)))
            self._event(name, "failed", f"[{i}/{len(self.names)}] {name}: failed", error=str(e))
            raise
        rec = StageRecord(name, time.perf_counter() - t0, status, note, [Path(a) for a in artifacts],
                          time.process_time() - c0)
        rec.size = rec.bytes
        self.records.append(rec)
        size = f", {human(rec.bytes)} on disk" if rec.artifacts else ""
        self._event(name, status, f"[{i}/{len(self.names)}] {name}: {status} in {rec.seconds:.1f}s{size}"
                    + (f" - {note}" if note else ""), seconds=rec.seconds, bytes=rec.bytes, note=note)
        return rec


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """One forge process per run directory. flock is released by the kernel when its holder dies (SIGKILL too)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / ".forge.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows: no lock
            pass
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise ForgeError(f"{root}: another forge process is working in this run directory"
                             + (f" (pid {other})" if other else ""),
                             "wait for it to finish, or use another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def clean_leftovers(root: Path, sink: Sink | None = None) -> list[str]:
    """Remove what a killed process left half-written (hidden ``.partial`` names) under the run directory."""
    gone = []
    for p in sorted(root.rglob(".*.partial")) + sorted(root.rglob(".*.partial.*")):
        if not p.exists():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(str(p.relative_to(root)))
    if gone:
        emit(sink, "log", STAGE, f"removed {len(gone)} half-written leftover(s) of an interrupted run: "
             + ", ".join(gone[:4]) + (" ..." if len(gone) > 4 else ""))
    return gone


def _stage_index(name: str | None, default: int) -> int:
    if name is None:
        return default
    if name not in STAGES:
        import difflib

        close = difflib.get_close_matches(name, STAGES, n=1)
        raise ForgeError(f"unknown stage {name!r}", f"did you mean {close[0]!r}?" if close else
                         f"stages: {', '.join(STAGES)}")
    return STAGES.index(name)


def default_model_name(recipe, run_dir: Path) -> tuple[str, str]:
    """(Ollama name, where it came from): the recipe's ollama.model, else one made from the run directory's name."""
    if recipe.ollama.model:
        return recipe.ollama.model, "ollama.model"
    from .ollama_names import suggest

    return suggest(run_dir.name or "forge-model", "latest"), f"made from the run directory name {run_dir.name!r}"


class _Chain:
    """The stage bodies over one run directory (state shared between stages lives here)."""

    def __init__(self, recipe, run_dir: Path, sink: Sink | None, *, force_from: int, push: bool, host: str | None,
                 gate: bool, should_stop: Callable[[], bool] | None, base_dir: Path | None):
        from .runs import RunDir

        self.recipe = recipe
        self.run = RunDir(run_dir).ensure()
        self.base_run = RunDir(run_dir / "base")
        self.sink = sink
        self.force_from = force_from
        self.push_wanted = push
        self.host = host or recipe.ollama.host
        self.gate_wanted = gate
        self.should_stop = should_stop
        self._base_dir = base_dir
        self._base_fp: str | None = None
        self.gate_passed: bool | None = None
        self.pushed: str | None = None
        self.push_note = ""
        self.eval: dict[str, Any] | None = None
        self.outtype = recipe.export.outtype
        self.quants = list(recipe.export.quant_types or ["Q4_K_M"])
        self.keep = set(recipe.export.keep)
        self.compare_base = recipe.eval.compare_base

    # --- shared helpers ---------------------------------------------------------------------------------------
    def forced(self, name: str) -> bool:
        return STAGES.index(name) >= self.force_from

    @property
    def base_dir(self) -> Path:
        if self._base_dir is None:
            from .merge import local_model_dir

            self._base_dir = local_model_dir(self.recipe.base_model, self.recipe.revision)
        return self._base_dir

    @property
    def base_fp(self) -> str:
        if self._base_fp is None:
            from .train.common import fingerprint_paths

            self._base_fp = fingerprint_paths([str(self.base_dir)])[str(self.base_dir)]
        return self._base_fp

    def adapter_hash(self) -> str:
        from .runs import hash_path

        if not (self.run.adapter / "adapter_config.json").is_file():
            raise ForgeError(f"{self.run.adapter}: no trained adapter", "run the training stages first (forge run "
                             "without --from)")
        return hash_path(self.run.adapter)

    def recorded(self, run, stage: str, path: Path) -> str:
        """The hash a finished stage recorded for one of its outputs (valid also after retention dropped it)."""
        entry = run.manifest().get("stages", {}).get(stage) or {}
        rel = str(path.relative_to(run.root))
        digest = entry.get("outputs", {}).get(rel)
        if digest is None:
            raise ForgeError(f"{run.root}: stage {stage} has not finished ({rel} not recorded)",
                             "run the chain from an earlier stage")
        return digest

    def current(self, run, stage: str, inputs: dict[str, str], config: Any, need: list[Path] = ()) -> bool:
        """Cached unless forced, and every output the run keeps (``need``) is on disk."""
        name = stage.split("-")[0] if stage.split("-")[0] in STAGES else stage
        if name in STAGES and self.forced(name):
            return False
        return run.is_current(stage, inputs, config) and all(p.exists() for p in need)

    def cached_step(self, run, stage: str, inputs: dict[str, str], config: Any, outputs: list[Path],
                    work: Callable[[], str], need: list[Path] | None = None) -> tuple[str, str]:
        if self.current(run, stage, inputs, config, outputs if need is None else need):
            return "cached", "inputs unchanged"
        note = work()
        run.record(stage, inputs, config, outputs)
        return "ran", note

    def qlora(self) -> bool:
        from .backends.transformers import adapter_meta

        return adapter_meta(self.run.adapter).get("method") == "qlora"

    def trained_system(self) -> str:
        from .backends.transformers import adapter_meta

        return adapter_meta(self.run.adapter).get("system_prompt") or ""

    # --- data ------------------------------------------------------------------------------------------------
    def data(self) -> tuple[str, str, list[Path]]:
        from .atomic import write_text
        from .data import load_data
        from .train.common import fingerprint_paths

        r = self.recipe
        files = list(r.data.train) + list(r.data.eval or [])
        if r.dpo is not None:
            files += list(r.dpo.data) + list(r.dpo.eval or [])
        if r.eval.prompts:
            files.append(r.eval.prompts)
        inputs = fingerprint_paths(files)
        config = {"data": dataclasses.asdict(r.data), "dpo": bool(r.dpo)}
        out = self.run.root / "data" / "report.json"

        def work() -> str:
            fmt = None if r.data.format == "auto" else r.data.format
            report: dict[str, Any] = {}
            parts = []
            for key, paths, f in (("train", r.data.train, fmt), ("eval", r.data.eval or [], fmt),
                                  ("dpo", r.dpo.data if r.dpo else [], "preference"),
                                  ("dpo_eval", (r.dpo.eval or []) if r.dpo else [], "preference")):
                if not paths:
                    continue
                d = load_data(paths, fmt=f)
                if not r.data.skip_invalid:
                    d.raise_if_invalid()
                report[key] = {"files": [Path(p).name for p in paths], "format": d.format, "why": d.reason,
                               "records": len(d.records), "invalid": len(d.problems), "read": d.total}
                parts.append(f"{key}: {len(d.records)} {d.format} records"
                             + (f" ({len(d.problems)} invalid skipped)" if d.problems else ""))
            write_text(out, json.dumps(report, indent=2, sort_keys=True) + "\n")
            return "; ".join(parts)

        status, note = self.cached_step(self.run, "data", inputs, config, [out], work)
        if status == "cached":
            rep = json.loads(out.read_text())
            note = "; ".join(f"{k}: {v['records']} {v['format']} records" for k, v in rep.items())
        return status, note, [out]

    # --- training -----------------------------------------------------------------------------------------------
    def _train(self, kind: str) -> tuple[str, str, list[Path]]:
        from .atomic import write_text
        from .runs import hash_config
        from .train import train_dpo, train_sft
        from .train.callbacks import FINISHED, complete_checkpoints

        r = self.recipe
        fn = train_sft if kind == "sft" else train_dpo
        if kind == "sft":
            from .train.sft import sft_config_hash, sft_inputs
            from .train.common import resolve_base

            key = hash_config({"inputs": sft_inputs(r, resolve_base(r)), "config": sft_config_hash(r)})
        else:
            from .train.common import fingerprint_paths

            key = hash_config({"inputs": list(fingerprint_paths([str(self.run.sft_adapter)] + list(r.dpo.data)
                                                                + list(r.dpo.eval or [])).values()),
                               "dpo": dataclasses.asdict(r.dpo), "seed": r.train.seed,
                               "max_length": r.dpo.max_length or r.train.max_length})
        ckpt = self.run.checkpoints / kind
        key_file = self.run.checkpoints / f"{kind}.key"
        done = complete_checkpoints(ckpt) if ckpt.is_dir() else []
        interrupted = bool(done) and not (ckpt / FINISHED).is_file()
        resume = force = False
        if self.forced(kind):
            force = True
        elif interrupted:
            same = key_file.is_file() and key_file.read_text().strip() == key
            if same:
                resume = True
                choice("resume", f"{kind} step {done[-1][0]}", "checkpoints of an interrupted run with the same "
                       "inputs and settings", self.sink, STAGE)
            else:
                force = True
                choice("restart", kind, "checkpoints of an interrupted run with other inputs or settings: starting "
                       "over", self.sink, STAGE)
        if not (key_file.is_file() and key_file.read_text().strip() == key):
            write_text(key_file, key + "\n")
        result = fn(r, self.run.root, sink=self.sink, resume=resume, force=force, should_stop=self.should_stop)
        if result.skipped:
            return "cached", "inputs unchanged", [result.adapter]
        loss = (f"loss {result.first_loss:.3f} -> {result.last_loss:.3f}"
                if result.first_loss is not None and result.last_loss is not None else "")
        extra = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
        return "ran", f"{result.steps} steps, {loss}".rstrip(", ") + extra, [result.adapter]

    def sft(self) -> tuple[str, str, list[Path]]:
        return self._train("sft")

    def dpo(self) -> tuple[str, str, list[Path]]:
        if self.recipe.dpo is None:
            return "skipped", "no dpo section in the recipe", []
        return self._train("dpo")

    # --- merge / convert ----------------------------------------------------------------------------------------
    def merge(self) -> tuple[str, str, list[Path]]:
        if "merged" not in self.keep:
            return "skipped", "streaming export: convert merges as it writes (merged/ is written only when " \
                              "export.keep lists merged)", []
        inputs = {"adapter": self.adapter_hash(), "base": self.base_fp}

        def work() -> str:
            from .merge import merge_adapter

            rep = merge_adapter(self.run.adapter, self.base_dir, self.run.merged, quantized_base=self.qlora(),
                                sink=self.sink)
            return f"{rep.merged_modules} LoRA modules merged"

        status, note = self.cached_step(self.run, "merge", inputs, {}, [self.run.merged], work)
        return status, note, [self.run.merged]

    def _convert_tuned(self) -> str:
        f16 = self.run.gguf(self.outtype)
        if (self.run.merged / "config.json").is_file() and "merged" in self.keep:
            from .gguf.convert import ConvertConfig, convert_hf_to_gguf

            rep = convert_hf_to_gguf(self.run.merged, f16, ConvertConfig(outtype=self.outtype), sink=self.sink)
            return f"from merged/, {human(rep.bytes_out)}"
        from .merge import export_gguf

        rep = export_gguf(self.run.adapter, self.base_dir, f16, outtype=self.outtype, quantized_base=self.qlora(),
                          sink=self.sink)
        return "streaming merge + convert"

    def _convert_base(self) -> str:
        from .gguf.convert import ConvertConfig, convert_hf_to_gguf

        convert_hf_to_gguf(self.base_dir, self.base_run.gguf(self.outtype), ConvertConfig(outtype=self.outtype),
                           sink=self.sink)
        return ""

    def _convert_plan(self) -> list[tuple[str, Any, str, dict[str, str], Callable[[], str]]]:
        plan = [("tuned", self.run, "convert", {"adapter": self.adapter_hash(), "base": self.base_fp},
                 self._convert_tuned)]
        if self.compare_base:
            plan.append(("base", self.base_run, "convert", {"model": self.base_fp}, self._convert_base))
        return plan

    def convert(self) -> tuple[str, str, list[Path]]:
        notes, outs, ran = [], [], False
        for label, run, stage, inputs, work in self._convert_plan():
            run.ensure()
            dst = run.gguf(self.outtype)
            need = [dst] if "f16" in self.keep else []
            status, _ = self.cached_step(run, stage, inputs, {"outtype": self.outtype}, [dst], work, need=need)
            ran |= status == "ran"
            notes.append(f"{label} {status}")
            outs.append(dst)
        return ("ran" if ran else "cached"), f"{self.outtype}: " + ", ".join(notes), [o for o in outs if o.exists()]

    def _ensure_f16(self, label: str, run, work: Callable[[], str], why: str) -> None:
        """Rebuild an F16 GGUF the retention policy dropped (byte-identical: same inputs, same converter)."""
        dst = run.gguf(self.outtype)
        if dst.exists():
            return
        choice("rebuild", dst.name, f"{label}: dropped by the retention policy (export.keep has no f16) and needed "
               f"{why}; add f16 to export.keep to keep it", self.sink, STAGE)
        work()
        from .runs import hash_path

        expected = self.recorded(run, "convert", dst)
        if hash_path(dst) != expected:  # the converter is deterministic; anything else is a bug worth stopping on
            raise ForgeError(f"{dst}: rebuilt F16 differs from the one recorded", "rerun with --from convert")

    # --- quantize -------------------------------------------------------------------------------------------------
    def quantize(self) -> tuple[str, str, list[Path]]:
        from .quantize import QuantizeConfig, quantize_gguf

        notes, outs, ran = [], [], False
        for label, run, _stage, _inputs, rebuild in self._convert_plan():
            f16 = run.gguf(self.outtype)
            for q in self.quants:
                dst = run.gguf(q)
                inputs = {"f16": self.recorded(run, "convert", f16)}

                def work(f16=f16, dst=dst, q=q, label=label, run=run, rebuild=rebuild) -> str:
                    self._ensure_f16(label, run, rebuild, f"to quantize {q}")
                    rep = quantize_gguf(f16, dst, QuantizeConfig(type=q), sink=self.sink)
                    return f"{len(rep.fallbacks)} fallback group(s)"

                status, _ = self.cached_step(run, f"quantize-{q.lower()}", inputs, {"type": q}, [dst], work)
                ran |= status == "ran"
                notes.append(f"{label} {q} {status}")
                outs.append(dst)
        return ("ran" if ran else "cached"), ", ".join(notes), outs

    # --- Modelfile --------------------------------------------------------------------------------------------------
    def modelfile(self) -> tuple[str, str, list[Path]]:
        from .modelfile import for_model

        r = self.recipe
        served = self.quants[0]
        outs, changed = [], False
        targets = [(self.run, self.run.gguf(served))] + ([(self.base_run, self.base_run.gguf(served))]
                                                          if self.compare_base else [])
        for run, gguf in targets:
            mf, _det = for_model(gguf, chat_format=r.chat_format, system=r.ollama.system,
                                 training_system=self.trained_system(), train_max_length=r.train.max_length,
                                 params=r.ollama.parameters or None, modelfile_dir=run.root, sink=self.sink)
            text = mf.render()
            if self.forced("modelfile") or not run.modelfile.is_file() or \
                    run.modelfile.read_text(encoding="utf-8") != text:
                mf.write(run.modelfile)
                changed = True
            outs.append(run.modelfile)
        return ("ran" if changed else "cached"), f"serves {served}; TEMPLATE and stops of the training chat format" \
            + ("" if changed else " (unchanged)"), outs

    # --- gate ---------------------------------------------------------------------------------------------------------
    def gate(self) -> tuple[str, str, list[Path]]:
        if not self.gate_wanted:
            return "skipped", "asked not to gate (--no-gate): the push stage will not register an ungated model", []
        from .runs import hash_path

        run = self.run
        gate_dir = run.root / "gate"
        quant = run.gguf(self.quants[0])
        inputs = {"adapter": self.adapter_hash(), "f16": self.recorded(run, "convert", run.gguf(self.outtype)),
                  "quant": self.recorded(run, f"quantize-{self.quants[0].lower()}", quant),
                  "modelfile": hash_path(run.modelfile)}

        def work() -> str:
            from .evaluate.fidelity import gate_for_run, write_gate_report

            rep = gate_for_run(run.root, config=self.recipe.gate, sink=self.sink)
            write_gate_report(rep, gate_dir)
            return ""

        status, _ = self.cached_step(run, "gate", inputs, {"gate": dataclasses.asdict(self.recipe.gate)},
                                     [gate_dir / "fidelity.json"], work)
        rep = json.loads((gate_dir / "fidelity.json").read_text())
        self.gate_passed = bool(rep["passed"])
        hops = ", ".join(f"{h['name']} {100 * h['top1']:.0f}%" for h in rep["hops"] if h.get("top1") is not None)
        return status, f"{'PASSED' if self.gate_passed else 'FAILED'} (top-1 agreement: {hops})", \
            [gate_dir / "fidelity.json"]

    # --- push ---------------------------------------------------------------------------------------------------------
    def push(self) -> tuple[str, str, list[Path]]:
        name, _src = default_model_name(self.recipe, self.run.root)
        later = f"forge push {name} {self.run.root}"
        if not self.push_wanted:
            self.push_note = f"not asked to push; later: {later}"
            return "skipped", self.push_note, []
        if self.gate_passed is False:
            self.push_note = f"the fidelity gate failed (see {self.run.root / 'gate' / 'fidelity.md'}): not " \
                             f"registering a model that differs from what was trained; to register anyway: {later}"
            return "skipped", self.push_note, []
        if self.gate_passed is None:
            self.push_note = f"not gated (--no-gate): not registering; to register anyway: {later}"
            return "skipped", self.push_note, []
        from .ollama import Ollama, base_url, push as push_model, spec_from

        with Ollama(self.host, timeout=3.0) as conn:
            answers = conn.answers()
        if not answers:
            self.push_note = (f"Ollama does not answer at {base_url(self.host)}; once it runs: {later}  "
                              f"(or: ollama create {name} -f {self.run.modelfile})")
            return "skipped", self.push_note, []
        res = push_model(name, spec_from(self.run.root, sink=self.sink), host=self.host, sink=self.sink)
        self.pushed = res.name
        self.push_note = f"{res.name} at {res.host} ({'created' if res.created else 'already current'})"
        return ("ran" if res.created else "cached"), self.push_note, []

    # --- eval -----------------------------------------------------------------------------------------------------------
    def evaluate(self) -> tuple[str, str, list[Path]]:
        from .runs import hash_path

        r = self.recipe
        run = self.run
        eval_dir = run.root / "eval"
        q = self.quants[0]
        tuned = run.gguf(q)
        base = self.base_run.gguf(q) if self.compare_base else None
        inputs = {"tuned": self.recorded(run, f"quantize-{q.lower()}", tuned)}
        if base is not None:
            inputs["base"] = self.recorded(self.base_run, f"quantize-{q.lower()}", base)
        if r.eval.prompts:
            inputs["prompts"] = hash_path(r.eval.prompts)
        system = self.trained_system()
        config = {"limit": r.eval.limit, "max_new_tokens": r.eval.max_new_tokens, "metric": r.eval.metric,
                  "chat_format": r.chat_format, "system": system, "data": dataclasses.asdict(r.data)}

        def work() -> str:
            from .evaluate import write_reports
            from .evaluate.models import ModelSpec
            from .evaluate.prompts import run_prompts
            from .evaluate.runner import loss_curves, run_eval

            rp = run_prompts(run.root, r.eval.limit)
            specs = ([ModelSpec(str(base), "gguf", str(base), label="base")] if base is not None else []) + \
                [ModelSpec(str(tuned), "gguf", str(tuned), label="tuned")]
            report = run_eval(specs, rp.prompts, max_new_tokens=r.eval.max_new_tokens, metric=r.eval.metric,
                              chat_format=r.chat_format, system=system, source=rp.source, overlap=rp.overlap,
                              run_dir=str(run.root), sink=self.sink)
            report.loss_curves = loss_curves(run.root)
            write_reports(report, eval_dir)
            return ""

        status, _ = self.cached_step(run, "eval", inputs, config, [eval_dir / "eval.json"], work)
        ev = json.loads((eval_dir / "eval.json").read_text())
        self.eval = ev
        scores = ", ".join(f"{m['label']} {r.eval.metric} {m['summary'][r.eval.metric]['mean']:.3f}"
                           for m in ev["models"] if r.eval.metric in m.get("summary", {}))
        return status, f"n={ev['n']}" + (f": {scores}" if scores else ""), [eval_dir]

    # --- retention ----------------------------------------------------------------------------------------------------
    def retention(self) -> list[Retained]:
        """Drop the intermediates export.keep does not list, once everything made from them is current; mark them
        dropped in the manifest first (a kill between the two leaves a file the manifest no longer needs)."""
        out: list[Retained] = []
        run, keep = self.run, self.keep
        m = run.manifest().get("stages", {})

        def consider(path: Path, kind: str, stage_run, stage: str, safe: bool, why_drop: str) -> None:
            if not path.exists():
                return
            size = disk_bytes(path)
            if kind in keep:
                out.append(Retained(path, size, True, f"export.keep lists {kind}"))
            elif not safe:
                out.append(Retained(path, size, True, "still needed by a stage that has not finished"))
            else:
                if stage:
                    stage_run.mark_dropped(stage, [path])
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                out.append(Retained(path, size, False, why_drop))

        consider(run.merged, "merged", run, "merge", "convert" in m,
                 f"not in export.keep {sorted(keep)}: the F16 was made from it")
        for label, r in (("tuned", run), ("base", self.base_run)):
            done = r.manifest().get("stages", {})
            safe = all(f"quantize-{q.lower()}" in done for q in self.quants) and \
                ("gate" in m or label == "base" or not self.gate_wanted)
            consider(r.gguf(self.outtype), "f16", r, "convert", safe,
                     "not in export.keep: rebuilt from the adapter if a new quant type needs it")
        train_done = "train-sft" in m and (self.recipe.dpo is None or "train-dpo" in m)
        consider(run.checkpoints, "checkpoints", run, "", train_done, "training finished: checkpoints only resume "
                 "an interrupted run")
        current = {r.gguf(q).name for q in self.quants} | {run.gguf(self.outtype).name}
        for r in (run, self.base_run):
            for old in sorted(r.root.glob("model-*.gguf")) if r.root.is_dir() else []:
                if old.name not in current:  # a quant type the recipe no longer asks for
                    size = disk_bytes(old)
                    r.forget("quantize-" + old.name[len("model-"):-len(".gguf")])
                    old.unlink()
                    out.append(Retained(old, size, False, "no longer in export.quant_types"))
        for p in [run.adapter] + [r.gguf(q) for r in (run, self.base_run) for q in self.quants]:
            if p.exists():
                out.append(Retained(p, disk_bytes(p), True, "a product of the run"))
        return out


def with_absolute_paths(recipe, recipe_path: str | os.PathLike | None = None):
    """A copy of ``recipe`` whose relative data and prompt paths are absolute, so the run's resolved recipe still finds
    them from any working directory. A relative path is looked up from the working directory (as ``forge train``
    reads it), else from the folder holding ``recipes/`` (the shipped recipes name ``recipes/demo/...``), else from
    the recipe file's folder; a path found nowhere (a Hub dataset id, or a missing file the loader will name) is
    kept as written."""
    import copy

    r = copy.deepcopy(recipe)
    roots = [Path.cwd()]
    if recipe_path is not None:
        here = Path(recipe_path).resolve().parent
        roots += [p.parent for p in (here, *here.parents) if p.name == "recipes"][:1] + [here]

    def fix(p: str) -> str:
        q = Path(p).expanduser()
        if q.is_absolute():
            return str(q)
        hit = next((root / q for root in roots if (root / q).exists()), None)
        return str(hit.resolve()) if hit is not None else p

    r.data.train = [fix(p) for p in r.data.train]
    if r.data.eval:
        r.data.eval = [fix(p) for p in r.data.eval]
    if r.dpo is not None:
        r.dpo.data = [fix(p) for p in r.dpo.data]
        if r.dpo.eval:
            r.dpo.eval = [fix(p) for p in r.dpo.eval]
    if r.eval.prompts:
        r.eval.prompts = fix(r.eval.prompts)
    return r


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None, *,
                run_dir: str | os.PathLike | None = None):
    """A recipe file with ``--set`` overrides, its relative data paths made absolute (``with_absolute_paths``) and
    run_dir filled in (default: ``runs/<recipe file name>``)."""
    from . import recipe as R

    path = Path(path)
    rec = with_absolute_paths(R.load(path, overrides), path)
    if run_dir is not None:
        rec.run_dir = str(Path(run_dir).expanduser().resolve())
    elif rec.run_dir:
        rec.run_dir = str(Path(rec.run_dir).expanduser().resolve())
    else:
        rec.run_dir = str((Path.cwd() / "runs" / path.stem).resolve())
    R.validate(rec, str(path))
    return rec


def run_pipeline(recipe, run_dir: str | os.PathLike, sink: Sink | None = None, *, from_stage: str | None = None,
                 until_stage: str | None = None, push: bool = True, host: str | None = None, gate: bool = True,
                 should_stop: Callable[[], bool] | None = None, base_dir: str | os.PathLike | None = None,
                 runner: Runner | None = None) -> PipelineReport:
    """Run the recipe's chain into ``run_dir`` (see the module docstring).

    ``from_stage`` redoes that stage and every later one (earlier ones must have finished); ``until_stage`` stops
    after that stage (and defers the retention policy). ``push=False`` never contacts Ollama. ``should_stop`` is
    polled between stages and after every training step: a stop saves a checkpoint and returns a report with
    ``stopped`` set. ``base_dir`` gives the base model's local directory when the caller already has it.
    """
    from .recipe import save_resolved

    t0 = time.perf_counter()
    root = Path(run_dir).expanduser().resolve()
    lo = _stage_index(from_stage, 0)
    hi = _stage_index(until_stage, len(STAGES) - 1)
    if lo > hi:
        raise ForgeError(f"--from {from_stage} comes after --until {until_stage}", f"stages run in this order: "
                         f"{', '.join(STAGES)}")
    names = list(STAGES[: hi + 1])
    runner = runner or Runner(sink, names, should_stop)

    def progress_sink(event) -> None:
        if event.kind == "progress":
            kill_point("progress")
        if sink is not None:
            sink(event)

    chain = _Chain(recipe, root, progress_sink, force_from=lo if from_stage else len(STAGES), push=push, host=host,
                   gate=gate, should_stop=should_stop, base_dir=Path(base_dir) if base_dir else None)
    report = PipelineReport(root, runner.records)
    with run_lock(root):
        clean_leftovers(root, sink)
        recipe.run_dir = str(root)
        save_resolved(recipe, root)
        bodies = {"data": chain.data, "sft": chain.sft, "dpo": chain.dpo, "merge": chain.merge,
                  "convert": chain.convert, "quantize": chain.quantize, "modelfile": chain.modelfile,
                  "gate": chain.gate, "push": chain.push, "eval": chain.evaluate}
        try:
            for i, name in enumerate(names):
                if i < lo:
                    runner.records.append(StageRecord(name, 0.0, "skipped", f"before --from {from_stage}"))
                    continue
                runner.run(name, bodies[name])
        except Stopped as e:
            report.stopped = e.one_line()
        if report.stopped is None and hi == len(STAGES) - 1:
            report.retention = chain.retention()
            freed = sum(r.bytes for r in report.retention if not r.kept)
            emit(sink, "log", STAGE, retention_text(report.retention, freed), retention=True)
    report.gate_passed, report.pushed, report.push_note = chain.gate_passed, chain.pushed, chain.push_note
    report.eval = chain.eval
    report.seconds = time.perf_counter() - t0
    return report


def retention_text(items: list[Retained], freed: int | None = None) -> str:
    if not items:
        return "retention: nothing to drop"
    root = os.path.commonpath([str(i.path) for i in items]) if len(items) > 1 else str(items[0].path.parent)
    kept = [f"{os.path.relpath(i.path, root)} {human(i.bytes)}" for i in items if i.kept]
    dropped = [f"{os.path.relpath(i.path, root)} {human(i.bytes)}" for i in items if not i.kept]
    text = "retention: kept " + ", ".join(kept)
    if dropped:
        text += f"; dropped {', '.join(dropped)} ({human(freed or 0)} freed; export.keep keeps them)"
    return text


__all__ = ["STAGES", "run_pipeline", "PipelineReport", "StageRecord", "Runner", "Retained", "retention_text",
           "default_model_name", "disk_bytes", "human"]
