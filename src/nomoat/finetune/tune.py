"""``nomoat tune DATA.jsonl``: LoRA fine-tuning within a time budget, resumable, on a CPU or GPUs.

A run folder (see :mod:`nomoat.runs`) holds everything: settings, per-step metrics, the checkpoint that
``--resume`` continues from exactly, the adapter, a manifest and a summary comparing base and tuned answers.
With ``--time`` the first steps are timed, the number of steps that fits the budget is planned (so the
learning-rate schedule can end on time) and re-planned at every eval from all timings so far, and the run
stops cleanly at the deadline. Ctrl-C also stops
cleanly after the current step with a checkpoint. The mechanics live in :mod:`nomoat.training`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nomoat.config import TuneConfig, default_threads
from nomoat.errors import UserError
from nomoat.finetune import basemodel, memory, runs, trainset
from nomoat.finetune import settings as tunesettings
from nomoat.paths import read_json, write_json


def run(
    data: str | Path | None = None,
    *,
    model: str | Path = "default",
    time: str | float | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    output: str | Path | None = None,
    resume: str | Path | None = None,
    eval_data: str | Path | None = None,
    threads: int | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
    on_step: Any = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``data`` (chat JSONL) with LoRA; returns the run's summary.

    Stop after ``time`` (e.g. "3h" or seconds), ``steps`` or ``epochs`` (default: one epoch). ``resume``
    continues a stopped run exactly. ``overrides`` set :class:`TuneConfig` fields (rank, lr, batch_size, ...).
    ``on_step(record)`` is called after every step; returning True stops the run cleanly (as Ctrl-C does).
    """
    from nomoat.finetune import training

    started = _now()
    dist = training.setup_dist()
    if resume is not None:
        if data is not None or time is not None or steps is not None or epochs is not None or overrides:
            raise UserError("--resume continues a run with its own data and plan; give only the run (and --threads)")
        run_dir = runs.find_run(resume)
        settings = read_json(run_dir / "config.json")
    else:
        settings = tunesettings.new(data, model, time, steps, epochs, eval_data, overrides, dist.world)
        run_dir = training.broadcast_path(runs.new_run_dir(output) if dist.main else None, dist)
    import torch

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))  # processes sharing this machine's cores
    torch.set_num_threads(threads or max(1, default_threads() // local_world))
    session = _Session.start(settings, run_dir, dist, resume is not None, skip_invalid, started)
    try:
        return session.train(progress, on_step)
    finally:
        session.close()


def _now() -> float:
    return time.monotonic()


@dataclass
class _Session:
    """One process's share of one sitting of a run: from start (or resume) to a stop."""

    settings: dict[str, Any]
    run_dir: Path
    dist: Any
    config: TuneConfig
    base: Any
    encoder: Any
    data: Any
    evals: list
    model: Any
    loss_model: Any
    step_model: Any
    params: list
    optimizer: Any
    bf16: bool
    state: runs.RunState
    started: float

    @classmethod
    def start(cls, settings, run_dir, dist, resuming, skip_invalid, started) -> _Session:
        import torch

        from nomoat.finetune import training

        config = TuneConfig(**settings["tune"])
        torch.manual_seed(config.seed)  # LoRA's A matrices start random: the same seed gives the same run
        base = basemodel.load(settings["model"])
        if resuming and base.sha256 != settings["base"]["sha256"]:
            raise UserError(f"the base model changed since this run started ({settings['model']}); start a new run")
        if resuming and not Path(settings["data"]).is_file():
            raise UserError(f"this run's dataset {settings['data']} is gone; put it back to resume")
        if resuming and basemodel.sha256_file(Path(settings["data"])) != settings["data_sha256"]:
            raise UserError(f"{settings['data']} changed since this run started; start a new run to train on it")
        encoder = trainset.ChatEncoder(base.tokenizer, base.chat_template)
        max_length = min(config.max_length, base.context_length or config.max_length)
        train = trainset.load(settings["data"], encoder, max_length, skip_invalid)
        evals = trainset.load_eval(settings.get("eval_data"), encoder, max_length, config.eval_rows)
        if not evals and dist.main and not resuming:
            print("nomoat: no eval rows (DATA.eval.jsonl or --eval FILE): eval loss is not measured", file=sys.stderr)
        bf16 = training.use_bf16(config.precision, dist.device)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
        memory.check_base(base, config, bf16, dist.device, local, train, shards=dist.world if config.fsdp else 1)
        model = training.add_lora(base.load_weights(torch.float32), config, bf16)
        loss_model = step_model = training.CausalLoss(model)
        if config.fsdp:
            training.shard(loss_model, dist)
        else:
            loss_model.to(dist.device)
            if dist.world > 1:
                step_model = torch.nn.parallel.DistributedDataParallel(loss_model)
        params = training.trainable(model)
        optimizer = torch.optim.AdamW([p for _, p in params], lr=config.lr, weight_decay=0.0)
        data = training.Data(train, config, dist.world)
        state = runs.RunState()
        found = runs.load_checkpoint(run_dir) if resuming else None
        if resuming and found is None:  # stopped before its first checkpoint: nothing to keep, start it over
            print(f"nomoat: {run_dir} had no checkpoint yet; training it from the start", file=sys.stderr)
            if dist.main:
                runs.truncate_metrics(run_dir, -1)
        if found is not None:
            tensors, state = found
            if state.planned_steps is not None and state.step >= state.planned_steps and runs.is_complete(run_dir):
                raise UserError(f"{run_dir} is complete ({state.step} steps); start a new run to train more")
            training.restore(tensors, params, optimizer)
            evals = evals[: state.eval_rows or len(evals)]
            if dist.main:
                runs.truncate_metrics(run_dir, state.step)
        state.planned_steps = state.planned_steps or tunesettings.fixed_plan(settings["budget"], data.steps_per_epoch)
        if dist.main and not resuming:
            write_json(run_dir / "config.json", settings | {"base": base.describe(), "rows": len(train)})
        return cls(
            settings, run_dir, dist, config, base, encoder, data, evals, model, loss_model, step_model,
            params, optimizer, bf16, state, started,
        )  # fmt: skip

    # -- the loop ---------------------------------------------------------------------------------
    def train(self, progress: bool, on_step: Any) -> dict[str, Any]:
        from tqdm import tqdm

        from nomoat.finetune import training

        st, stop = self.state, training.Stop()
        bar = tqdm(total=st.planned_steps, initial=st.step, unit="step", desc="tune",
                   disable=not progress or not self.dist.main, dynamic_ncols=True)  # fmt: skip
        if st.eval_loss_start is None:
            self._fit_evals_to_budget()
            st.eval_loss_start = st.eval_loss = self._evaluate()
            self._record({"step": 0, "loss": None, "eval_loss": st.eval_loss})
        timed: list[tuple[float, int]] = []  # (seconds, padded tokens) of this sitting's steps after the first
        last_checkpoint, reason, first = _now(), "steps", st.step
        with stop.installed():
            while True:
                if st.planned_steps is not None and st.step >= st.planned_steps:
                    break
                if self._out_of_time(timed):
                    reason = "time"
                    break
                seconds, padded, record = self._step()
                if st.step > first + 1:
                    timed.append((seconds, padded))
                if st.planned_steps is None and len(timed) >= self.config.plan_after:
                    st.planned_steps = bar.total = self._plan(timed)
                if self._eval_due():
                    record["eval_loss"] = st.eval_loss = self._evaluate()
                    if self._time_left() is not None:  # re-plan with every measurement so far
                        st.planned_steps = bar.total = self._plan(timed)
                    st.next_eval = st.step + self._eval_every()
                self._record(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tok_s']:.0f}", eval=st.eval_loss)
                wanted = bool(on_step(record)) if on_step else False
                halt, save = self._agree(
                    stop.requested or wanted, _now() - last_checkpoint > self.config.checkpoint_every_s
                )
                if halt:
                    reason = "stopped"
                    break
                if save:
                    self._checkpoint()
                    last_checkpoint = _now()
        bar.close()
        return self._finish(reason)

    def _step(self) -> tuple[float, int, dict[str, Any]]:
        import torch

        from nomoat.finetune import training

        st, dist = self.state, self.dist
        rows = self.data.batch(st.step, dist.rank)
        ids, labels = (t.to(dist.device) for t in trainset.collate(rows))
        lr = training.learning_rate(st.step, st.planned_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t = _now()
        try:
            with training.autocast(dist.device, self.bf16):
                loss = self.step_model(ids, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in self.params], self.config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            raise UserError(
                f"out of memory at step {st.step + 1} (batch of {ids.shape[0]} rows x {ids.shape[1]} tokens); "
                f"the last checkpoint is intact: start again with a smaller --batch-size or --max-length"
            ) from exc
        seconds = _now() - t
        tokens = int(training.all_reduce(sum(len(r.ids) for r in rows), dist))
        st.step += 1
        st.tokens += tokens
        st.train_s += seconds
        loss_value = training.all_reduce(float(loss.detach()), dist) / dist.world
        record = {"step": st.step, "loss": round(loss_value, 5), "lr": lr, "tokens": tokens}
        record |= {"tok_s": round(tokens / max(seconds, 1e-9), 1), "elapsed_s": round(self._elapsed(), 1)}
        return seconds, ids.numel(), record

    def _elapsed(self) -> float:
        return self.state.elapsed_s + _now() - self.started

    # -- time budget --------------------------------------------------------------------------------
    def _time_left(self) -> float | None:
        budget = self.settings["budget"]["time_s"]
        return None if budget is None else budget - self._elapsed()

    def _reserve(self) -> float:
        # Time kept for the end: a last eval, the checkpoint, the adapter and the sample answers.
        return (self.state.eval_s or 0.0) + 10.0

    def _step_cost(self, timed: list[tuple[float, int]]) -> Any:
        from nomoat.finetune import training

        cost = training.fit_step_cost(timed)
        return lambda step: cost(self.data.padded_tokens(step, self.dist.rank))

    def _out_of_time(self, timed: list[tuple[float, int]]) -> bool:
        left = self._time_left()
        if left is None:
            return False
        predicted = self._step_cost(timed)(self.state.step) if timed else 0.0
        return self._agree(left - self._reserve() < predicted, False)[0]

    def _plan(self, timed: list[tuple[float, int]]) -> int:
        """Steps that fit the time left, walking the known future batches with the measured cost per token."""
        from nomoat.finetune import training

        evals_left = max(0, self.config.evals - max(0, self.state.evals_done))
        left = (self._time_left() or 0.0) - self._reserve() - (self.state.eval_s or 0.0) * evals_left
        planned = training.plan_steps(self.state.step, left, self._step_cost(timed))
        return int(training.all_reduce(max(planned, self.state.step + 1), self.dist, "min"))

    def _eval_every(self) -> int:
        return max(1, (self.state.planned_steps or 1) // max(1, self.config.evals))

    def _eval_due(self) -> bool:
        # The next eval is fixed when the previous one ends, so a re-plan moves later evals, not earlier ones.
        st = self.state
        if not self.evals or st.planned_steps is None:
            return False
        if st.next_eval is None:
            st.next_eval = st.step - 1 + self._eval_every()
        return st.step >= st.next_eval or st.step >= st.planned_steps

    def _agree(self, stop: bool, save: bool) -> tuple[bool, bool]:
        """Every process stops (or saves) when any one wants to: one all-reduce of both flags."""
        from nomoat.finetune import training

        return training.any_of((stop, save), self.dist)

    # -- eval, checkpoint, end ------------------------------------------------------------------------
    def _fit_evals_to_budget(self) -> None:
        """With --time, cut the eval rows to a prefix whose passes fit ``eval_share`` of the budget (timed on the
        first rows). 200 rows measured a dozen times took 30 % of a 20-minute run here, and all of a 5-minute
        run on a busy machine, which then made no step at all."""
        from nomoat.finetune import training

        budget = self.settings["budget"]["time_s"]
        if not budget or len(self.evals) <= self.config.min_eval_rows:
            return
        probe = self.evals[: self.config.min_eval_rows]
        t = _now()
        training.evaluate(self.loss_model, list(probe), self.config, self.dist, self.bf16)
        per_row = (_now() - t) / len(probe)
        per_pass = self.config.eval_share * budget / (self.config.evals + 2)  # before, during, at the end
        keep = int(training.all_reduce(max(self.config.min_eval_rows, int(per_pass / per_row)), self.dist, "min"))
        if keep < len(self.evals):
            self.evals = self.evals[:keep]
            self.state.eval_rows = keep  # kept in the checkpoint: a resumed run measures the same rows

    def _evaluate(self) -> float | None:
        from nomoat.finetune import training

        if not self.evals:
            return None
        t = _now()
        loss = training.evaluate(self.loss_model, list(self.evals), self.config, self.dist, self.bf16)
        self.state.eval_s, self.state.eval_step = _now() - t, self.state.step
        self.state.evals_done += 1  # the one before training is not counted
        return round(loss, 5)

    def _record(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            runs.append_metric(self.run_dir, record)

    def _checkpoint(self) -> None:
        from nomoat.finetune import training

        tensors = training.checkpoint_tensors(self.params, self.optimizer)
        self.state.elapsed_s, self.started = self._elapsed(), _now()
        if self.dist.main:
            try:
                runs.save_checkpoint(self.run_dir, tensors, self.state)
            except OSError as exc:
                raise UserError(
                    f"could not save the checkpoint of step {self.state.step} ({exc.strerror or exc}); "
                    f"the previous checkpoint in {self.run_dir} is intact: free space, then --resume {self.run_dir}"
                ) from exc
        self._barrier()

    def _barrier(self) -> None:
        if self.dist.world > 1:
            import torch

            torch.distributed.barrier()

    def _finish(self, reason: str) -> dict[str, Any]:
        from nomoat.finetune import training

        st = self.state
        complete = reason != "stopped"
        if complete and self.evals and st.eval_step != st.step:
            st.eval_loss = self._evaluate()
        self._checkpoint()
        adapter = self.run_dir / "adapter"
        weights = {name: training.whole(p.detach()) for name, p in self.params}  # gathered by all under FSDP
        if self.dist.main:
            runs.replace_dir(adapter, lambda folder: self._save_adapter(folder, weights))
        if reason == "time" and st.step == 0 and self.dist.main:
            print(f"nomoat: the time budget ran out before the first step ({st.elapsed_s:.0f} s went to loading "
                  "and the first eval loss): give more --time", file=sys.stderr)  # fmt: skip
        root = self.loss_model if training.sharded(self.loss_model) else None  # all processes generate, in step
        samples = self._samples(root) if complete and (self.dist.main or root is not None) else []
        summary = {
            "run": str(self.run_dir),
            "status": "complete" if complete else "stopped",
            "stop_reason": reason,
            "steps": st.step,
            "planned_steps": st.planned_steps,
            "tokens": st.tokens,
            "train_tok_s": round(st.tokens / st.train_s, 1) if st.train_s else None,
            "seconds": round(st.elapsed_s, 1),
            "eval_loss_start": st.eval_loss_start,
            "eval_loss_end": st.eval_loss,
            "adapter": str(adapter),
            "precision": "bf16" if self.bf16 else "fp32",
            "processes": self.dist.world,
            "samples": samples,
        }
        if self.dist.main:
            write_json(self.run_dir / "summary.json", summary)
            self._manifest(summary["status"], adapter / "adapter_model.safetensors")
        self._barrier()
        return summary

    def _manifest(self, status: str, weights: Path) -> None:
        # kb -> dataset -> base model -> adapter; export and eval add their entries to the same file later
        runs.update_manifest(
            self.run_dir,
            run_id=self.run_dir.name,
            status=status,
            dataset={"path": self.settings["data"], "sha256": self.settings["data_sha256"]},
            eval_dataset=self.settings["eval_data"],
            base_model=self.base.describe(),
            adapter={"path": str(weights), "sha256": basemodel.sha256_file(weights), "format": "peft"},
        )

    def _save_adapter(self, folder: Path, weights: dict[str, Any]) -> None:
        # PEFT's own format (adapter_config.json + adapter_model.safetensors): peft, vLLM and llama.cpp's
        # convert_lora_to_gguf.py all read it. The base model's name is its path here, not a hub id.
        self.model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False,
                                   state_dict=weights)  # fmt: skip

    def _samples(self, root: Any) -> list[dict[str, str]]:
        from nomoat.finetune import training

        chats = trainset.sample_chats(self.settings.get("eval_data"), self.settings["data"])
        chats = chats[: self.config.sample_prompts]
        return training.side_by_side(self.model, self.encoder, chats, self.config.sample_tokens, self.bf16, root)

    def close(self) -> None:
        if self.dist.world > 1:
            import torch

            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
