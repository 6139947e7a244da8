"""Trainer callbacks: metrics -> events + ``metrics.jsonl``; checkpoints made atomic.

transformers writes ``checkpoint-N`` folders in place and, on resume, ``get_last_checkpoint`` picks the
highest-numbered folder whether or not it was completely written. So the Trainer writes into a staging folder
(``checkpoints/<stage>/.staging``) and, once every rank has finished writing, rank 0 adds a ``COMPLETE`` marker (written
last) and renames the folder to ``checkpoints/<stage>/step-N``. Resume only ever looks at ``step-N`` folders holding
the marker; whatever a kill left in staging is discarded.

Test hooks (environment, for the kill-and-resume tests only): ``FORGE_TEST_KILL_AT=step:N`` SIGKILLs the process after
optimizer step N; ``FORGE_TEST_KILL_AT=save:N`` SIGKILLs it inside the save of checkpoint N, after the adapter weights
were written and before the optimizer state. ``FORGE_TEST_BATCH_LOG=DIR`` makes each rank append a hash of every
batch it trains on to ``DIR/rank<R>.txt``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..events import Sink, emit

COMPLETE = "COMPLETE"
STAGING = ".staging"
_STEP = re.compile(r"^step-(\d+)$")

def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed() -> None:
    """Under torchrun / accelerate launch, join the process group now, so barriers before the Trainer exists work
    (transformers reuses this state)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState()


def barrier() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints on disk


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under ``root``, oldest first."""
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP.match(p.name)
            if m and p.is_dir() and (p / COMPLETE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: Path) -> Optional[Path]:
    done = complete_checkpoints(root)
    return done[-1][1] if done else None


def discard_incomplete(root: Path) -> list[str]:
    """Remove staging leftovers and step folders without the marker (a kill mid-save); returns what went."""
    gone = []
    if not root.is_dir():
        return gone
    for p in root.iterdir():
        if p.name == STAGING or p.name.endswith(".partial") or (_STEP.match(p.name) and not (p / COMPLETE).is_file()):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


FINISHED = "FINISHED"  # in checkpoints/<stage>/ once the stage wrote its adapter: its checkpoints are history


def prepare_checkpoints(root: Path, resume: bool, force: bool, where: str) -> tuple[Optional[Path], list[str]]:
    """Decide where training starts: (checkpoint to resume from or None, what was discarded).

    Every start discards what a killed run left half-written. A fresh start clears the checkpoints of a finished run
    (or, with ``force``, of any run) but refuses to bury those of an interrupted one without being told."""
    main = is_main_process()
    done = complete_checkpoints(root)
    finished = (root / FINISHED).is_file()
    resume_from = done[-1][1] if resume and done else None
    if not resume and done and not finished and not force:
        from ..errors import ForgeError

        raise ForgeError(f"{root}: checkpoints of an interrupted {where} run (up to step {done[-1][0]})",
                         "pass --resume to continue from there, or --force to start over")
    barrier()  # every rank decided before rank 0 changes anything
    gone: list[str] = []
    if main:
        gone = discard_incomplete(root)
        if not resume and (done or finished):
            shutil.rmtree(root, ignore_errors=True)
            gone.append("earlier checkpoints")
        elif resume:
            (root / FINISHED).unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
    barrier()
    return resume_from, gone


def mark_finished(root: Path) -> None:
    if is_main_process() and root.is_dir():
        (root / FINISHED).write_text(json.dumps({"time": time.time()}) + "\n")


def commit_checkpoint(staged: Path, root: Path, step: int, keep: int) -> Path:
    """Mark ``staged`` complete and rename it to ``root/step-N``; keep the newest ``keep`` complete ones."""
    final = root / f"step-{step}"
    (staged / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}) + "\n")
    _fsync_tree(staged)
    from ..testhooks import kill_point

    kill_point("rename", f"{root.name}/{final.name}")
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_dir(root)
    if keep > 0:
        for _, old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


# ---------------------------------------------------------------------------------------------------------------
# Metrics file


def trim_metrics(path: Path, stage: str, after_step: int) -> None:
    """Drop rows of ``stage`` logged after ``after_step``: a killed run logged them, the resumed run logs them again."""
    if not path.is_file():
        return
    from ..atomic import write_text

    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if row.get("stage") == stage and row.get("step", 0) > after_step:
            continue
        keep.append(line)
    write_text(path, "".join(k + "\n" for k in keep))


def read_metrics(path: Path, stage: Optional[str] = None) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if stage is None or row.get("stage") == stage:
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Callbacks (built lazily: transformers is heavy)


class AlreadyTrained(Exception):
    """Raised inside ``trainer.train`` when a resumed run has no step left (see ForgeCallback.on_step_begin)."""


def run_training(trainer, resume_from, callback, stage: str, ckpt_root: Path) -> Any:
    """``trainer.train``, resuming from ``resume_from``; None when that checkpoint already was the last step. Raises
    ``Stopped`` when ``callback`` (the stage's ForgeCallback) saw a stop request: its checkpoint is saved."""
    try:
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except AlreadyTrained:
        return None
    if callback.stopped:
        from ..errors import Stopped

        raise Stopped(f"{stage}: stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; "
                      f"checkpoint saved in {ckpt_root}", "run again to resume from it")
    return out


def make_callbacks(stage: str, metrics_path: Path, ckpt_root: Path, keep: int, sink: Sink | None,
                   total_steps_hint: Optional[int] = None, should_stop: Optional[Callable[[], bool]] = None) -> list:
    """The callbacks of one training stage. ``should_stop`` (polled after every optimizer step) asks for a stop: the
    step's checkpoint is saved and training ends early with ``callbacks[0].stopped`` set."""
    from transformers import TrainerCallback

    class ForgeCallback(TrainerCallback):
        """Streams metrics as events and to metrics.jsonl; commits checkpoints atomically; reports progress."""

        def __init__(self):
            self.main = is_main_process()
            self.t_last: Optional[float] = None
            self.tokens_last: Optional[int] = None
            self.t_start = time.time()
            self.step_start = 0
            self.first_loss: Optional[float] = None
            self.first_eval: Optional[float] = None
            self.last: dict[str, Any] = {}
            self.last_eval: Optional[float] = None
            self.cpu_start = time.process_time()
            self.cpu_seconds: Optional[float] = None
            self.step_rates: list[float] = []
            self.stopped = False

        def on_train_begin(self, args, state, control, **kw):
            self.cpu_start = time.process_time()  # CPU seconds: a throughput measure other processes cannot skew
            self.t_start = self.t_last = time.time()
            self.step_start = state.global_step
            self.tokens_last = state.num_input_tokens_seen
            if self.main:
                emit(sink, "stage", stage, f"{stage}: training for {state.max_steps} steps"
                     + (f" (resuming at step {state.global_step})" if state.global_step else ""),
                     step=state.global_step, total=state.max_steps)

        def on_train_end(self, args, state, control, **kw):
            self.cpu_seconds = time.process_time() - self.cpu_start

        def on_step_begin(self, args, state, control, **kw):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                # Resumed from the last checkpoint of a run killed before it saved its adapter: transformers would
                # train one step past max_steps (measured: a step-7 checkpoint of a 6-step run). Nothing is left
                # to train; the caller saves the weights the checkpoint restored.
                raise AlreadyTrained(state.global_step)
            self.step_t0, self.step_tokens0 = time.perf_counter(), state.num_input_tokens_seen

        def median_step_rate(self) -> Optional[float]:
            """Median over steps of tokens/s: robust to bursts of load from other processes."""
            rates = sorted(self.step_rates)
            return rates[len(rates) // 2] if rates else None

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - getattr(self, "step_t0", time.perf_counter())
            if dt > 0 and state.num_input_tokens_seen > getattr(self, "step_tokens0", 0):
                self.step_rates.append((state.num_input_tokens_seen - self.step_tokens0) / dt)
            if state.global_step >= state.max_steps:  # always end on a logged loss and an eval, whatever divides
                control.should_log = True
                if args.eval_strategy != "no":
                    control.should_evaluate = True
            if self.main:
                done = state.global_step - self.step_start
                elapsed = time.time() - self.t_start
                left = state.max_steps - state.global_step
                eta = elapsed / done * left if done else None
                emit(sink, "progress", stage, "", step=state.global_step, total=state.max_steps, eta_s=eta,
                     loss=self.last.get("loss"))
            _kill_hook("step", state.global_step)
            if should_stop is not None and state.global_step < state.max_steps and should_stop():
                control.should_save = True
                control.should_training_stop = True
                self.stopped = True

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            if not self.main:
                return
            now = time.time()
            row: dict[str, Any] = {"stage": stage, "step": state.global_step, "epoch": logs.get("epoch")}
            if "eval_loss" in logs:
                row["eval_loss"] = logs["eval_loss"]
                for k in ("eval_rewards/margins", "eval_rewards/accuracies", "eval_mean_token_accuracy"):
                    if k in logs:
                        row[k.replace("eval_", "eval_").replace("/", "_")] = logs[k]
                if self.first_eval is None:
                    self.first_eval = logs["eval_loss"]
                self.last_eval = logs["eval_loss"]
            elif "loss" in logs:
                row["loss"] = logs["loss"]
                row["lr"] = logs.get("learning_rate")
                row["grad_norm"] = logs.get("grad_norm")
                tokens = state.num_input_tokens_seen
                if self.tokens_last is not None and self.t_last is not None and tokens >= self.tokens_last \
                        and now > self.t_last:
                    row["tokens_per_s"] = round((tokens - self.tokens_last) / (now - self.t_last), 1)
                row["tokens"] = tokens
                for k in ("rewards/margins", "rewards/accuracies", "mean_token_accuracy"):
                    if k in logs:
                        row[k.replace("/", "_")] = logs[k]
                self.tokens_last, self.t_last = tokens, now
                if self.first_loss is None:
                    self.first_loss = logs["loss"]
                self.last = row
            else:  # the final train summary (train_runtime, ...)
                return
            row["time"] = round(now, 3)
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if k not in ("stage", "time", "epoch") and v is not None)
            emit(sink, "metric", stage, msg, **{k: v for k, v in row.items() if k != "stage"})

        def on_save(self, args, state, control, **kw):
            staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            barrier()  # every rank has written its part (RNG state per rank) before rank 0 commits
            if self.main and staged.is_dir():
                final = commit_checkpoint(staged, ckpt_root, state.global_step, keep)
                emit(sink, "log", stage, f"checkpoint {final.name} saved", step=state.global_step, path=str(final))
            barrier()

    return [ForgeCallback()]


# ---------------------------------------------------------------------------------------------------------------
# Test hooks


def _kill_hook(where: str, step: int) -> None:
    spec = os.environ.get("FORGE_TEST_KILL_AT")
    if spec and spec == f"{where}:{step}" and is_main_process():
        os.kill(os.getpid(), signal.SIGKILL)


def install_test_hooks(trainer) -> None:
    """Wire the FORGE_TEST_* hooks into a built trainer (no-op unless the environment asks)."""
    spec = os.environ.get("FORGE_TEST_KILL_AT", "")
    if spec.startswith("save:"):
        original = trainer._save_optimizer_and_scheduler

        def save_then_maybe_die(output_dir, *a, **k):
            _kill_hook("save", trainer.state.global_step)
            return original(output_dir, *a, **k)

        trainer._save_optimizer_and_scheduler = save_then_maybe_die
    log_dir = os.environ.get("FORGE_TEST_BATCH_LOG")
    if log_dir:
        import hashlib

        rank = int(os.environ.get("RANK", "0"))
        out = Path(log_dir) / f"rank{rank}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        collate = trainer.data_collator

        def logging_collator(examples):
            batch = collate(examples)
            digest = hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()[:16]
            with open(out, "a") as f:
                f.write(digest + "\n")
            return batch

        trainer.data_collator = logging_collator
