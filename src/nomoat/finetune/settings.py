"""What ``nomoat tune`` is asked to do, checked before anything loads: the dataset and its eval split, the base
model, the budget (``--time``, ``--steps`` or ``--epochs``) and the :class:`TuneConfig` overrides. The result is
the run's ``config.json``; a resumed run reads it back instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nomoat.config import TuneConfig, parse_duration
from nomoat.errors import UserError
from nomoat.finetune import basemodel

OVERRIDABLE = (
    "rank",
    "lora_layers",
    "lr",
    "batch_size",
    "max_length",
    "precision",
    "seed",
    "alpha",
    "dropout",
    "sample_prompts",
    "fsdp",
)


def new(data, model, budget_time, steps, epochs, eval_data, overrides, world) -> dict[str, Any]:
    """The settings of a new run (``config.json``), or a UserError naming the first bad flag."""
    if data is None:
        raise UserError("name the dataset: nomoat tune DATA.jsonl (make one with `nomoat data build`)")
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise UserError(f"unknown tune settings: {', '.join(sorted(unknown))}")
    config = TuneConfig(**{k: v for k, v in overrides.items() if v is not None})
    _check(config)
    if config.fsdp and world < 2:
        raise UserError("--fsdp shards the base over torchrun's processes: run torchrun --nproc-per-node N -m nomoat "
                        "tune ... --fsdp (docs/guide.md)")  # fmt: skip
    if sum(x is not None for x in (budget_time, steps, epochs)) > 1:
        raise UserError("give one of --time, --steps and --epochs")
    seconds = _budget_seconds(budget_time)
    if steps is not None and steps < 1:
        raise UserError("--steps must be at least 1")
    if epochs is not None and not epochs > 0:
        raise UserError("--epochs must be positive")
    from nomoat.llm.models import architecture, resolve

    architecture(resolve(model))  # an unsupported architecture fails here, before any file is read or written
    data_path = _existing(data, "dataset")
    eval_path = _existing(eval_data, "eval dataset") if eval_data else _sibling_eval(data_path)
    return {
        "data": str(data_path),
        "data_sha256": basemodel.sha256_file(data_path),
        "eval_data": str(eval_path) if eval_path else None,
        "model": str(model) if str(model) == "default" else str(Path(model).expanduser().resolve()),
        "budget": {"time_s": seconds, "steps": steps, "epochs": epochs if seconds is None and not steps else None},
        "tune": asdict(config),
        "world_size": world,
    }


def _check(c: TuneConfig) -> None:
    problems = [
        (c.rank < 1, "--rank must be at least 1"),
        (not 0 < c.lora_layers <= 1, "--lora-layers must be greater than 0 and at most 1"),
        (not c.lr > 0, "--lr must be positive"),
        (c.batch_size < 1, "--batch-size must be at least 1"),
        (c.max_length < 16, "--max-length must be at least 16"),
        (not 0 <= c.dropout < 1, "--dropout must be in [0, 1)"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)


def _budget_seconds(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except ValueError as exc:
        raise UserError(f"--time: {exc}") from None
    if seconds < 30:
        raise UserError("--time must be at least 30s (the first steps are timed to plan the run)")
    return seconds


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} not found: {path}")
    return p.resolve()


def _sibling_eval(data: Path) -> Path | None:
    # `nomoat data build -o x.jsonl` writes the held-out rows to x.eval.jsonl
    candidate = data.with_name(data.stem + ".eval.jsonl")
    return candidate if candidate.is_file() else None


def fixed_plan(budget: dict[str, Any], steps_per_epoch: int) -> int | None:
    """Steps a run with this budget takes, or None for a --time run (planned after its first steps are timed)."""
    if budget.get("steps"):
        return int(budget["steps"])
    if budget.get("time_s"):
        return None
    return max(1, math.ceil((budget.get("epochs") or 1.0) * steps_per_epoch))
