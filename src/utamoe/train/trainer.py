"""The training loop: Accelerate, stages, checkpoints, resume, and the guards around them.

One code path for CPU, one GPU, several GPUs or machines (DDP / FSDP / DeepSpeed
through Accelerate's own launch configs, `configs/accelerate/`); the model itself is
single-device code, and what the engines must know of it (FSDP units, ZeRO-3 leaves,
activation checkpointing) is set per stage in train/engines.py.
Per stage: surgery, LoRA, trainable parameters, a fresh AdamW with linear warmup
and cosine decay, then `steps` optimiser steps of `grad_accum` micro-batches each,
with gradient clipping and bf16 autocast where the device supports it. With
`train.pack` every micro-batch's samples are packed into rows (utamoe.data.packing):
same samples, same losses, no padding computed; the log gains `pack_efficiency`
(real tokens / token slots) beside `padded_efficiency` (the same samples padded).

Reliability: checkpoints are atomic (train/checkpoint.py) and hold model,
optimiser, scheduler and random states; batches are a pure function of their
position (train/data.py), so `resume` continues a killed run exactly. SIGINT and
SIGTERM save a checkpoint at the next step boundary and stop. A non-finite loss
skips its step (logged); `max_bad_steps` in a row stop the run, leaving the last
good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import DistributedDataParallelKwargs
from accelerate.utils import set_seed

from utamoe.model.io import current_name, save_model_dir
from utamoe.model.unified import UnifiedOutput
from utamoe.train.checkpoint import (
    OldNames,
    complete_checkpoints,
    convert_old_names,
    latest_checkpoint,
    read_state,
    save_checkpoint,
)
from utamoe.train.config import ExperimentConfig, StageConfig, dump_config
from utamoe.train.data import BatchStream
from utamoe.train.engines import (
    after_prepare,
    check_same_groups,
    configure_engine,
    enable_activation_checkpointing,
    make_accelerator,
    plain_model,
    structure_template,
)
from utamoe.train.levers import scale_attention_init, set_qk_norm_gain, split_by_group
from utamoe.train.logs import CollapseWatch, MetricsLog, plot_losses, step_metrics
from utamoe.train.optim import build_optimizer, lr_lambda
from utamoe.train.progress import StageProgress
from utamoe.train.reporters import check_report_to, open_reporters
from utamoe.train.run_dir import RunLock, clean_start
from utamoe.train.setup import benchmark_with, prepare_run
from utamoe.train.stages import add_lora, apply_surgery, merge_lora, select_trainable


def _merge_outputs(outs):
    """One UnifiedOutput for the logs from the per-group sub-batches of a step."""
    merged = UnifiedOutput(sum(o.loss.detach() for o in outs))
    for o in outs:
        merged.group_losses.update(o.group_losses)
        merged.task_losses.update(o.task_losses)
        for k, v in o.moe_losses.items():
            merged.moe_losses[k] = merged.moe_losses.get(k, 0) + v.detach()
    merged.session = outs[-1].session
    return merged


class TrainingStopped(RuntimeError):
    """The run stopped early (signal or repeated non-finite losses); a checkpoint names where."""


class CheckpointDamaged(RuntimeError):
    """A checkpoint that cannot be resumed from (unreadable files or state); resume falls back."""


@dataclass
class TrainState:
    stage: int = 0  # index of the stage in progress
    step: int = 0  # optimiser steps done in that stage
    global_step: int = 0
    bad_steps: int = 0


def mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class Trainer:
    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, progress: bool = True):
        self.cfg, self.run_dir, self.show_progress = cfg, Path(run_dir), progress
        # GPUs: Accelerate's own choice; CPU-only: gloo under DDP, FSDP or DeepSpeed (engines.py).
        self.accelerator = make_accelerator(
            mixed_precision=mixed_precision(cfg.train.mixed_precision),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.main = self.accelerator.is_main_process
        self.ckpt_root = self.run_dir / "checkpoints"
        self._stop_signal: int | None = None
        self._template = None  # the model's structure, under FSDP / DeepSpeed (engines.py)
        self.every_part = False  # the engine needs every part on every forward (engines.py)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        acc = self.accelerator
        check_report_to(self.cfg.train.report_to)  # a missing logger fails now, not after setup
        set_seed(self.cfg.run.seed)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config = self.run_dir / "config.yaml"
            if not config.is_file():  # a resumed run keeps its own config, never rewritten
                config.write_text(dump_config(self.cfg))
        acc.wait_for_everyone()
        run = prepare_run(self.cfg, self.run_dir, acc, progress=self.show_progress and self.main)
        self.model, self.text_tokenizer, self.data = run.model, run.text_tokenizer, run.data
        self._apply_levers()
        self.model.to(acc.device)
        reporters = open_reporters(self.cfg.train.report_to, self.run_dir, asdict(self.cfg),
                                   self.cfg.train.wandb_project) if self.main else []
        self.log = MetricsLog(self.run_dir, enabled=self.main, reporters=reporters)
        self.collapse = CollapseWatch(self.cfg.train.collapse_share, self.cfg.train.collapse_patience)

    def _apply_levers(self) -> None:
        """Issue-12 levers (utamoe.train.levers) and the data's benchmark hooks (streamed
        samples, extra questions; utamoe.benchmarks); a resumed run loads its weights over the
        init."""
        t = self.cfg.train
        self.data.prompt_loss_tasks = tuple(t.prompt_loss_tasks)
        self.data.pack_tokens = t.pack_tokens if t.pack else None
        wanted = {"stream_sample": "data.stream" if self.cfg.data.stream else None,
                  "extra_questions": "train.extra_questions" if t.extra_questions > 0 else None,
                  "scene_text": "train.text_scene_questions" if t.text_scene_questions > 0 else None}
        wanted = {hook: key for hook, key in wanted.items() if key}
        if wanted:
            self.data.benchmark = benchmark_with(self.cfg.data.dir, wanted)
            self.data.extra_questions = t.extra_questions
            self.data.extra_question_kinds = dict(t.extra_question_kinds)
            self.data.text_scene_questions = t.text_scene_questions
            if self.cfg.data.stream:
                self.data.stream, self.data.image_tokenizer = True, self.model.image_tokenizer
        if t.qk_init_std > 0:
            gen = torch.Generator().manual_seed(self.cfg.run.seed)
            scale_attention_init(self.model.lm, t.qk_init_std, gen)
        if t.qk_norm_gain > 0:
            set_qk_norm_gain(self.model.lm, t.qk_norm_gain)

    # ------------------------------------------------------------------ stages

    def _start_stage(self, stage: StageConfig, lora: bool = True) -> None:
        apply_surgery(self.model, stage.surgery, stage.moe)
        if lora and stage.lora is not None:
            add_lora(self.model, stage.lora.rank, stage.lora.alpha, stage.lora.targets, stage.lora.dropout)
        if self.cfg.train.activation_checkpointing:  # after surgery: it binds the routed layers
            enable_activation_checkpointing(self.model)
        self.model.to(self.accelerator.device)

    def _optimizer(self, stage: StageConfig):
        t = self.cfg.train
        select_trainable(self.model, stage.trainable, stage.frozen)
        opt = build_optimizer(self.model, t, stage.lr or t.lr, stage.optimizer)
        warmup = t.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(warmup, stage.steps, t.min_lr_ratio, t.schedule, t.decay_frac))
        return opt, sched

    def _end_stage(self, stage: StageConfig) -> None:
        # FSDP / DeepSpeed: the weights gathered on every process into a plain copy (engines.py)
        self.model = plain_model(self.accelerator, self.prepared, self._template)
        if stage.lora is not None:
            merge_lora(self.model)
        self.accelerator.free_memory()
        self.prepared = self.opt = self._template = None

    def run(self, resume: bool = False, fresh: bool = False) -> Path:
        """Train (or, with `resume`, continue from the newest usable checkpoint); `fresh`
        first removes an earlier run's artefacts from the run directory (`--force`)."""
        with RunLock(self.run_dir, enabled=self.main):
            if fresh and self.main:
                clean_start(self.run_dir)
            self.accelerator.wait_for_everyone()
            if not resume:
                return self._run(None)
            candidates = complete_checkpoints(self.ckpt_root)
            if not candidates:
                raise FileNotFoundError(
                    f"--resume: no complete checkpoint under {self.ckpt_root} (the run stopped "
                    f"before its first one); start it again with `utamoe train --config "
                    f"{self.run_dir / 'config.yaml'} --out {self.run_dir} --force`")
            for i, ckpt in enumerate(candidates):
                try:
                    state = self._state_of(ckpt)
                    return self._run((ckpt, state))
                except CheckpointDamaged as err:
                    self.accelerator.free_memory()  # forget the prepared model before retrying
                    nxt = candidates[i + 1].name if i + 1 < len(candidates) else None
                    print(f"[resume] {err}; " + (f"falling back to {nxt}" if nxt else
                                                 "no earlier checkpoint is left"), flush=True)
            raise FileNotFoundError(f"--resume: no usable checkpoint under {self.ckpt_root}; start "
                                    f"the run again with --force")

    def _state_of(self, ckpt: Path) -> TrainState:
        """The checkpoint's trainer state, checked against this recipe."""
        try:
            state = TrainState(**read_state(ckpt)["trainer"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointDamaged(f"{ckpt.name}: unreadable trainer state ({err})") from err
        stages = self.cfg.stages
        ok = (0 <= state.stage < len(stages) and 0 <= state.step <= stages[state.stage].steps
              and state.global_step == sum(s.steps for s in stages[:state.stage]) + state.step)
        if not ok:
            raise CheckpointDamaged(f"{ckpt.name}: trainer state {asdict(state)} does not fit the "
                                    f"recipe's {len(stages)} stages")
        return state

    def _run(self, resume) -> Path:
        self.setup()
        state, ckpt = TrainState(), None
        if resume is not None:
            ckpt, state = resume
            self.log.truncate_after(state.global_step)
        resume_stage = state.stage if ckpt is not None else -1
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index, stage in enumerate(self.cfg.stages):
                if index < state.stage:  # finished before the checkpoint: rebuild its structure
                    self._start_stage(stage, lora=False)
                    continue
                self._start_stage(stage)
                opt, sched = self._optimizer(stage)
                self._template = structure_template(self.accelerator, self.model)
                engine = configure_engine(self.accelerator, self.model, self.cfg.train, opt)  # FSDP / ZeRO units
                self.every_part = bool(engine.get("every_part"))
                self.prepared, self.opt = self.accelerator.prepare(self.model, opt)
                after_prepare(self.accelerator, self.prepared, self.model)
                self.sched = sched
                if index == resume_stage:
                    self._load_checkpoint(ckpt)
                    with warnings.catch_warnings():  # "scheduler stepped before optimizer": intended
                        warnings.simplefilter("ignore", UserWarning)
                        for _ in range(state.step):  # the schedule is a function of the step count
                            sched.step()
                self._train_stage(index, stage, state)
                self._end_stage(stage)
                state.stage, state.step = index + 1, 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.close()
        return self._finish()

    def _load_checkpoint(self, ckpt: Path) -> None:
        """Accelerate's state from `ckpt`; a checkpoint of an older utamoe (model format 1
        parameter names) is converted first where the renaming is mechanical."""
        try:
            self.accelerator.load_state(str(ckpt))
            return
        except Exception as err:  # truncated / garbage files, or another utamoe's names
            first = err
        expected = set(self.accelerator.unwrap_model(self.prepared).state_dict())
        older, converted = "", None
        try:
            converted = convert_old_names(ckpt, expected, current_name) if self.main else None
        except OldNames as err:
            older = f" (written by an older utamoe: {err})"
        except Exception:  # unreadable: the original error says more
            pass
        self.accelerator.wait_for_everyone()
        if converted:
            print(f"[resume] {ckpt.name} was written by an older utamoe (model format 1 parameter "
                  f"names): renamed in {converted.name}, the original kept as "
                  f"{converted.name}.old-names", flush=True)
        if not older:  # every process: the main one may have converted the file
            try:
                self.accelerator.load_state(str(ckpt))
                return
            except Exception as err:
                first = err
        raise CheckpointDamaged(f"{ckpt.name} cannot be loaded{older} ({type(first).__name__}: "
                                f"{str(first)[:200]})") from first

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    # ------------------------------------------------------------------ the loop

    def _train_stage(self, index: int, stage: StageConfig, state: TrainState) -> None:
        t = self.cfg.train
        self.prepared.train()
        # A benchmark's streamed samples are encoded by the model's own codec: in this process.
        workers = 0 if self.data.stream else self.cfg.data.workers
        self._batches = BatchStream(self.data, index, state.step * t.grad_accum,
                                    (stage.steps - state.step) * t.grad_accum, t.batch_size,
                                    stage.mixture, t.cfg_dropout, workers)
        with StageProgress(stage.name, stage.steps, state.step, enabled=self.show_progress and self.main) as bar, \
                contextlib.closing(self._batches):
            while state.step < stage.steps:
                if self._stop_signal is not None:
                    path = self._checkpoint(state)
                    raise TrainingStopped(f"stopped by signal {self._stop_signal}; checkpoint at {path}; "
                                          f"continue with `utamoe train --resume {self.run_dir}`")
                start = time.perf_counter()
                out, tokens, packing = self._step(index, stage, state)
                state.step += 1
                state.global_step += 1
                if out is not None and (state.global_step % t.log_every == 0 or state.step == stage.steps):
                    self._log(out, stage, state, tokens, time.perf_counter() - start, packing)
                bar.update(state.step, None if out is None else out.loss.item())
                if state.global_step % t.ckpt_every == 0 or state.step == stage.steps:
                    self._checkpoint(state)

    def _step(self, index: int, stage: StageConfig, state: TrainState):
        t, acc = self.cfg.train, self.accelerator
        outs, tokens, slots, padded = [], 0, 0, 0.0
        for micro in range(t.grad_accum):
            batch = self._batches.get(state.step * t.grad_accum + micro).to(acc.device)
            # a clear error, not a hang: split_groups, or DeepSpeed without every_part (engines.py)
            check_same_groups(acc, batch, self.every_part, t.split_groups)
            parts = [batch]
            if t.split_groups:  # issue 12: one forward per task group, each without the other's padding
                parts = split_by_group(batch)
            part_outs = []
            for p, part in enumerate(parts):
                sync = micro == t.grad_accum - 1 and p == len(parts) - 1

                def ctx(sync=sync):  # a fresh context each time: no_sync cannot be entered twice
                    return acc.no_sync(self.prepared) if not sync else contextlib.nullcontext()

                with ctx(), acc.autocast():
                    out = self.prepared(part, every_part=self.every_part)
                finite = torch.tensor(float(torch.isfinite(out.loss)), device=acc.device)
                if acc.reduce(finite, reduction="sum").item() < acc.num_processes:
                    return self._bad_step(state)
                with ctx():
                    acc.backward(out.loss / t.grad_accum)
                part_outs.append(out)
            outs.append(part_outs[0] if len(part_outs) == 1 else _merge_outputs(part_outs))
            tokens += int(batch.attention_mask.sum())
            slots += batch.attention_mask.numel()
            if t.pack:  # slots the same samples would take right-padded (collate)
                padded += len(batch.lengths) * max(batch.lengths)
        # The step's loss over its global batch: the mean of every micro-batch's loss on every
        # process (what the update descends; `loss` in the log is the main process's last one).
        self._global_loss = acc.reduce(torch.stack([o.loss.detach().float() for o in outs]).mean(),
                                       reduction="mean").item()
        if t.clip_grad > 0:
            acc.clip_grad_norm_(self.prepared.parameters(), t.clip_grad)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        state.bad_steps = 0
        packing = {"pack_efficiency": tokens / slots, "padded_efficiency": tokens / padded} if t.pack else {}
        return outs[-1], tokens, packing

    def _bad_step(self, state: TrainState):
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()  # keep the schedule aligned with the step count
        state.bad_steps += 1
        if self.main:
            self.log.write({"stage": self.cfg.stages[state.stage].name, "step": state.step + 1,
                            "global_step": state.global_step + 1, "skipped": "non-finite loss"})
        if state.bad_steps >= self.cfg.train.max_bad_steps:
            last = latest_checkpoint(self.ckpt_root)
            raise TrainingStopped(f"{state.bad_steps} non-finite losses in a row at step "
                                  f"{state.global_step + 1}; last good checkpoint: {last}")
        return None, 0, {}

    def _log(self, out, stage, state, tokens, seconds, packing: dict | None = None) -> None:
        if not self.main:
            return
        moe = self.accelerator.unwrap_model(self.prepared).config.moe
        rec = step_metrics(out, stage.name, state.step, state.global_step,
                           self.sched.get_last_lr()[0], tokens * self.accelerator.num_processes, seconds,
                           moe.group_names if moe is not None else ())
        rec.update({k: round(v, 4) for k, v in (packing or {}).items()})
        rec["global_loss"] = self._global_loss
        self.log.write(rec)
        alert = self.collapse.update(rec)
        if alert:
            self.log.alert(alert, state.global_step)

    def _checkpoint(self, state: TrainState) -> Path:
        name = f"step-{state.global_step}"
        return save_checkpoint(self.accelerator, self.ckpt_root, name, {"trainer": asdict(state)})

    def _finish(self) -> Path:
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "ffn_stash"):  # a recipe that split FFNs and never upcycled them
            del model.ffn_stash
        out = self.run_dir / "model"
        if self.main:
            trained = [t for t in self.data.tasks  # in memory or on disk
                       if any(st.mixture.get(t, 0) > 0 for st in self.cfg.stages)]
            save_model_dir(model, out, self.text_tokenizer, trained_tasks=trained)
            if self.log.path.is_file():
                plot_losses(self.log.path, self.run_dir / "loss.png")
        self.accelerator.wait_for_everyone()
        return out
