"""The training loop: one trainer for pretraining and finetuning, on one process or many.

The batch of step s is a pure function of (seed, s) (see phi1.data.loader) and
dropout is reseeded from (seed, s, rank) at every step, so a run resumed from a
checkpoint reproduces an uninterrupted run's losses exactly in fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from phi1.errors import Phi1Error
from phi1.train import checkpoint as ckpt_io
from phi1.train import rundir, setup
from phi1.train.config import TrainConfig
from phi1.train.distributed import (World, all_reduce_mean, barrier, broadcast_object, close_world,
                                    eager_modules, grad_scaler, grad_sync, init_world, prepare_model, unwrap)
from phi1.train.metrics import MetricsLog, memory_stats, peak_flops
from phi1.train.schedule import lr_at
from phi1.utils.device import torch_dtype
from phi1.utils.io import atomic_write_text
from phi1.utils.progress import progress
from phi1.utils.safety import describe_oserror

EvalCallback = Callable[[torch.nn.Module, object], dict]


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def better(value: float, best: float | None, mode: str) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value < best if mode == "min" else value > best


class Trainer:
    """Builds everything from a TrainConfig (checking inputs first), then `fit()` runs it."""

    def __init__(self, cfg: TrainConfig, world: World, resume: bool = False,
                 eval_callback: EvalCallback | None = None, new_run: bool = False):
        self.lock = None
        try:
            self._build(cfg, world, resume, eval_callback, new_run)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the run directory's lock (the kernel does it too if the process dies)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self, cfg: TrainConfig, world: World, resume: bool, eval_callback: EvalCallback | None,
               new_run: bool) -> None:
        self.cfg, self.world = cfg, world
        self.tokenizer = setup.load_tokenizer_for(cfg)
        mcfg = setup.initial_model_config(cfg, self.tokenizer)
        # Before anything is written: one writer per run directory, never a foreign directory.
        self.lock = rundir.take_run_dir(cfg, world, new_run=new_run, resume=resume)
        self.run_dir = cfg.run_dir
        self.train_data, self.val_data = setup.build_data(cfg, self.tokenizer, mcfg.vocab_size)
        self.accum = setup.accumulation_steps(cfg, world.size)
        self.max_steps = setup.total_steps(cfg)
        self.callback = eval_callback or setup.load_callback(cfg)
        e = cfg.eval
        if e.interval and e.best_metric == "val_loss" and self.val_data is None:
            raise Phi1Error(f"config.eval.best_metric = 'val_loss' but {cfg.data.train[0].path} has no val split "
                            "and data.val is empty; pack with --val-fraction or set data.val")
        if e.interval and e.best_metric != "val_loss" and self.callback is None:
            raise Phi1Error(f"config.eval.best_metric = {e.best_metric!r}: needs eval.callback to produce it")
        self.selected_on = self._selected_on()
        ckpt = ckpt_io.latest_checkpoint(self.run_dir)
        if resume and ckpt is None:
            raise Phi1Error(f"{self.run_dir}: --resume given but there is no checkpoint to resume from")
        self.resume_from = ckpt
        state = trainer = None
        if ckpt is not None:
            setup.check_checkpoint_shape(ckpt, mcfg)
            state, trainer = ckpt_io.load_state(ckpt)
        rundir.check_config_unchanged(cfg, self.run_dir, (state or {}).get("config"))
        model = setup.build_model(cfg, mcfg, ckpt).to(world.device)
        self.flops_per_token = model.flops_per_token(cfg.data.seq_len)
        self.model = prepare_model(model, world, activation_checkpointing=cfg.train.activation_checkpointing,
                                   compile=cfg.train.compile, precision=cfg.train.precision)
        self.optimizer = setup.make_optimizer(self.model, cfg, world.device)
        self.dpo = setup.build_dpo(cfg, self.train_data, self.val_data, world) if cfg.train.kind == "dpo" else None
        prec = cfg.train.precision
        self.autocast_dtype = torch_dtype(prec, "config.train.precision")
        self.scaler = grad_scaler(prec, world)
        self.step, self.samples, self.best = 0, 0, None
        if ckpt is not None:
            try:
                ckpt_io.restore_optimizer(self.model, self.optimizer, trainer["optimizer"], world)
                if self.scaler is not None and trainer.get("scaler"):
                    self.scaler.load_state_dict(trainer["scaler"])
                ckpt_io.set_rng_state(trainer["rng"])
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise Phi1Error(f"{ckpt / 'trainer.pt'}: the training state does not fit this run "
                                f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); delete {ckpt} to resume "
                                "from an earlier checkpoint (or use a new run.name to start over)") from None
            self.step, self.samples = state["step"], state["samples"]
        best = ckpt_io.read_best(ckpt_io.checkpoints_dir(self.run_dir))
        self.best = best["value"] if best and best.get("metric") == e.best_metric else None
        self.log = MetricsLog(self.run_dir, self.step if ckpt else None) if world.is_main else None
        self.peak = peak_flops(world.device)
        if world.is_main:
            f = self.run_dir / "config.yaml"
            try:
                atomic_write_text(f, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            except OSError as exc:
                raise Phi1Error(f"{f}: cannot write the run's config: {describe_oserror(exc)}") from None

    def _selected_on(self) -> str | None:
        """What the best checkpoint is chosen on, in words (best.json, the report)."""
        e, d = self.cfg.eval, self.cfg.data
        if e.best_metric == "val_loss":
            return "val_loss on the val split of " + ", ".join(s.path for s in (d.val or d.train))
        return getattr(self.callback, "selection", None)

    # ---- pieces ----------------------------------------------------------------------------------
    def autocast(self):
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.autocast_dtype)

    def micro_indices(self, base: int, micro: int) -> list[int]:
        """Global sample indices of this rank's micro-batch `micro` within the step starting at `base`."""
        mb, w = self.cfg.train.micro_batch, self.world
        start = base + (micro * w.size + w.rank) * mb
        return list(range(start, start + mb))

    def train_step(self) -> dict:
        cfg, w = self.cfg, self.world
        lr = lr_at(self.step, lr=cfg.optimizer.lr, warmup_steps=cfg.schedule.warmup_steps,
                   max_steps=self.max_steps, kind=cfg.schedule.kind, min_lr=cfg.schedule.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(step_seed(cfg.run.seed, self.step, w.rank))
        self.model.train()
        total = torch.zeros((), device=w.device)
        stats: dict[str, torch.Tensor] = {}
        for m in range(self.accum):
            loss, extra = self._micro_step(m)
            total += loss
            for k, v in extra.items():
                stats[k] = stats.get(k, 0.0) + v.float() / self.accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = cfg.train.grad_clip if cfg.train.grad_clip is not None else float("inf")
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(gnorm, "full_tensor"):  # a DTensor under FSDP2
            gnorm = gnorm.full_tensor()
        scaling = {}
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skips the update when a gradient is inf/nan
            self.scaler.update()              # ... and then halves the scale: that is how a skip shows
            scaling = {"loss_scale": scale, "skipped": self.scaler.get_scale() < scale}
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples += cfg.train.global_batch
        loss = all_reduce_mean(total / self.accum, w).item()
        return {"loss": loss, "lr": lr, "grad_norm": gnorm.item(), **scaling,
                **{k: all_reduce_mean(v, w).item() for k, v in stats.items()}}

    def _micro_step(self, m: int) -> tuple[torch.Tensor, dict]:
        """Forward and backward of micro-batch m; returns only detached values, so the batch, the
        (bf16) logits and the graph are gone before the next micro-step's forward."""
        w = self.world
        batch = self.train_data.batch(self.micro_indices(self.samples, m), w.device)
        with grad_sync(self.model, w, m == self.accum - 1):
            with self.autocast():
                loss, extra = self.micro_loss(batch)
            del batch
            scaled = loss / self.accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach(), {k: v.detach() for k, v in extra.items()}

    def micro_loss(self, batch) -> tuple[torch.Tensor, dict]:
        """(loss, extra metrics) of one micro-batch: next-token loss, or the DPO loss and its rewards."""
        if self.dpo is not None:
            return self.dpo(self.model, batch)
        x, y = batch
        loss = self.model(x, y)[1]  # the logits are not kept
        return loss, {}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss over eval.batches micro-batches per rank, plus the callback's metrics.

        Runs through the uncompiled modules: eval mode, no_grad and the callback's generation
        shapes would otherwise add graphs to the compiled training blocks."""
        with eager_modules(unwrap(self.model)):
            return self._evaluate()

    def _evaluate(self) -> dict:
        w, out = self.world, {}
        self.model.eval()
        if self.val_data is not None:
            total = torch.zeros((), device=w.device)
            n = self.cfg.eval.batches
            for i in range(n):
                batch = self.val_data.sequential_batch(self.micro_indices(0, i), w.device)
                with self.autocast():
                    loss, _ = self.micro_loss(batch)
                total += loss.float()
            out["val_loss"] = all_reduce_mean(total / n, w).item()
        if self.callback is not None:
            # Under FSDP2 a forward is a collective, so every rank runs the callback; else rank 0 only.
            res = None
            if w.strategy == "fsdp2" or w.is_main:
                res = {k: float(v) for k, v in self.callback(unwrap(self.model), self.tokenizer).items()}
            out.update(broadcast_object(res, w) or {})
        self.model.train()
        return out

    def state(self, metrics: dict) -> dict:
        return {"samples": self.samples, "tokens": self.samples * self.cfg.data.seq_len, "seed": self.cfg.run.seed,
                "world_size": self.world.size, "global_batch": self.cfg.train.global_batch,
                "tokenizer": self.tokenizer.fingerprint(), "metrics": metrics, "config": self.cfg.to_dict()}

    def save(self, metrics: dict) -> Path:
        t0 = time.perf_counter()
        path = ckpt_io.save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self.scaler,
                                       self.tokenizer, self.state(metrics), self.world,
                                       keep_last_k=self.cfg.checkpoint.keep_last_k,
                                       keep_steps=self.cfg.checkpoint.keep_steps)
        if self.log is not None:  # model + optimizer + RNG state, written and renamed into place
            self.log.write({"step": self.step, "checkpoint_s": time.perf_counter() - t0})
        return path

    # ---- loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, w = self.cfg, self.world
        ev, ck = cfg.eval, cfg.checkpoint
        tokens_per_step = cfg.train.global_batch * cfg.data.seq_len
        bar = progress(total=self.max_steps, initial=self.step, desc=cfg.run.name, unit="step") if w.is_main else None
        last: dict = {}
        saved_at = self.step if self.resume_from else None
        try:
            while self.step < self.max_steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                dt = time.perf_counter() - t0
                tps = tokens_per_step / dt
                # MFU is against the datasheet's dense bf16 peak (989 TFLOP/s for H100 SXM/H200);
                # tflops_per_gpu is what was achieved, so either can be compared.
                rec.update(step=self.step, tokens=self.samples * cfg.data.seq_len, tokens_per_s=tps,
                           tflops_per_gpu=self.flops_per_token * tps / w.size / 1e12,
                           mfu=(self.flops_per_token * tps / (self.peak * w.size)) if self.peak else None,
                           step_time_s=dt, **memory_stats(w.device))
                if not math.isfinite(rec["loss"]) and self.scaler is None:
                    raise Phi1Error(f"step {self.step}: loss is {rec['loss']}; lower optimizer.lr or use bf16/fp32")
                last = rec
                if w.is_main and (self.step % cfg.train.log_interval == 0 or self.step == self.max_steps):
                    self.log.write(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
                if bar is not None:
                    bar.update(1)
                done = self.step == self.max_steps
                metrics = {}
                if ev.interval and (self.step % ev.interval == 0 or done):
                    metrics = self.evaluate()
                    if w.is_main:
                        self.log.write({"step": self.step, **metrics})
                        self.log.plot()
                    last.update(metrics)
                    value = metrics.get(ev.best_metric)
                    if value is not None and better(value, self.best, ev.best_mode):
                        self.best = value
                        self.save(metrics)
                        saved_at = self.step
                        ckpt_io.write_best(self.run_dir, self.step, ev.best_metric, value, w, self.selected_on)
                        if w.is_main:
                            ckpt_io.prune(ckpt_io.checkpoints_dir(self.run_dir), ck.keep_last_k, ck.keep_steps)
                        barrier(w)
                if saved_at != self.step and ((ck.interval and self.step % ck.interval == 0) or done):
                    self.save(metrics)
                    saved_at = self.step
        finally:
            if bar is not None:
                bar.close()
            if self.log is not None:
                self.log.close()
            if hasattr(self.callback, "close"):  # e.g. the eval sandbox's worker processes
                self.callback.close()
        return {"step": self.step, "run_dir": str(self.run_dir), "best": self.best, "last": last,
                "checkpoint": str(ckpt_io.latest_checkpoint(self.run_dir))}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, resume: bool = False, eval_callback: EvalCallback | None = None,
          new_run: bool = False) -> dict:
    """Run (or resume) training as configured; joins the torchrun process group when launched by it.

    The run directory is locked for the whole run (a second writer fails at once). A rerun
    resumes from the latest checkpoint; a changed config is refused unless `new_run`, which
    starts a fresh run in a new sibling directory (`NAME-2`, ...) when NAME already holds one.
    """
    world = init_world(cfg.run.device, cfg.distributed.strategy, cfg.distributed.backend)
    trainer = None
    try:
        seed_everything(cfg.run.seed)
        trainer = Trainer(cfg, world, resume=resume, eval_callback=eval_callback, new_run=new_run)
        result = trainer.fit()
        barrier(world)  # no rank tears gloo down while another still talks to it (aborts at exit otherwise)
        return result
    finally:
        if trainer is not None:
            trainer.release()
        close_world(world)
