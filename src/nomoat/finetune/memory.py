"""Memory planning before a tune: the peak a run will need, estimated from the base's config and parameter count
before any weight loads, and a refusal with the estimate when it cannot fit (rather than an OOM kill later).

The estimate is deliberately simple and on the safe side (docs/guide.md shows it for a few sizes):

* loading: transformers materializes the base in fp32 (a GGUF is dequantized tensor by tensor from its mapped
  file), so ``4 x parameters`` (+ the GGUF file) at the start;
* training: frozen weights in the training dtype (bf16: 2 bytes, else 4), LoRA weights with their gradients and
  AdamW moments (16 bytes each), activations kept for the backward pass (per token and layer about
  ``4 x (16 x hidden + 3 x intermediate)`` bytes, bf16 halves it) and logits for the labelled tokens
  (``12 x vocab`` bytes each: logits, softmax, gradient);
* everything once per process on this machine (``torchrun`` runs several); FSDP divides the frozen weights.

On a GPU the two phases live apart: the load in the host's memory (once per process), the training on each
process's GPU (its share of the weights, LoRA, activations, logits, and the CUDA context); each is checked.

``NOMOAT_MEMORY_LIMIT`` (e.g. ``8G``) plans as if only that much memory were available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nomoat.config import TuneConfig
from nomoat.errors import UserError

GIB = 2**30
OVERHEAD = 0.75 * GIB  # the Python process with torch, transformers and the tokenizer loaded
CUDA_CONTEXT = 0.5 * GIB  # kernels and allocator reserve on each GPU
LIMIT_ENV = "NOMOAT_MEMORY_LIMIT"


@dataclass(frozen=True)
class Estimate:
    load: int
    weights: int
    lora: int
    activations: int
    logits: int
    processes: int

    @property
    def train(self) -> int:
        return self.weights + self.lora + self.activations + self.logits

    @property
    def peak(self) -> int:
        """On a CPU: the machine's memory over both phases, all processes."""
        return self.processes * (max(self.load, self.train) + int(OVERHEAD))

    @property
    def gpu_peak(self) -> int:
        """On a GPU: each process's device memory while it trains."""
        return self.train + int(CUDA_CONTEXT)

    def describe(self) -> str:
        parts = [f"loading {self.load / GIB:.1f}", f"weights {self.weights / GIB:.1f}",
                 f"LoRA+AdamW {self.lora / GIB:.2f}", f"activations {self.activations / GIB:.1f}",
                 f"logits {self.logits / GIB:.1f}"]  # fmt: skip
        each = f" x {self.processes} processes" if self.processes > 1 else ""
        return f"about {self.peak / GIB:.1f} GiB ({', '.join(parts)} GiB{each})"


def estimate(config: Any, parameters: int, tune: TuneConfig, bf16: bool, *, file_bytes: int = 0,
             processes: int = 1, shards: int = 1, rows: tuple[int, int] | None = None) -> Estimate:  # fmt: skip
    """Peak memory of a tune of a model with transformers ``config`` and ``parameters`` weights. ``rows``:
    (longest row, most labelled tokens in a row) of the real data; without it every row is ``max_length`` tokens,
    all labelled (RAG rows are long prompts with short answers: their logits cost little)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden
    longest, labelled = rows or (tune.max_length, tune.max_length)
    tokens = tune.batch_size * min(longest, tune.max_length)
    # LoRA on the 7 projections of a layer: rank x (in + out) each, about rank x (8 hidden + 3 intermediate)
    lora_params = layers * tune.rank * (8 * hidden + 3 * inter)
    act_bytes = 2 if bf16 else 4
    return Estimate(
        load=4 * parameters + file_bytes,
        weights=(2 if bf16 else 4) * parameters // shards,
        lora=16 * lora_params,
        activations=tokens * layers * act_bytes * (16 * hidden + 3 * inter),
        logits=tune.batch_size * min(labelled, tune.max_length) * 12 * config.vocab_size,
        processes=processes,
    )


def available(device: str = "cpu") -> int | None:
    """Bytes this process may still use: NOMOAT_MEMORY_LIMIT, else the GPU's free memory, else the smaller of
    the cgroup limit and MemAvailable. None when nothing can be read."""
    if os.environ.get(LIMIT_ENV):
        return _parse_size(os.environ[LIMIT_ENV])
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    for cgroup in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = cgroup.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            found.append(int(text))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return min(found) if found else None


def check(plan: Estimate, device: str = "cpu") -> None:
    """UserError with the estimate when ``plan`` does not fit what is available."""
    if device.startswith("cuda"):
        host = plan.processes * (plan.load + int(OVERHEAD))
        needs = [(host, "cpu", "in memory", f"about {host / GIB:.1f} GiB to load the base"),
                 (plan.gpu_peak, device, "on the GPU", f"about {plan.gpu_peak / GIB:.1f} GiB per GPU")]  # fmt: skip
    else:
        needs = [(plan.peak, "cpu", "in memory", plan.describe())]
    for need, where, place, what in needs:
        free = available(where)
        if free is not None and need > free:
            raise UserError(
                f"this tune needs {what} but only {free / GIB:.1f} GiB are free {place}: lower --max-length or "
                f"--batch-size, use --precision bf16, or shard the base over GPUs (--fsdp, docs/guide.md)"
            )


def _parse_size(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1] if value and value[-1] in units else ""
    try:
        return int(float(value.removesuffix(unit)) * units[unit])
    except ValueError:
        raise UserError(f"{LIMIT_ENV} must be a size such as 8G (got {text!r})") from None


def check_base(base: Any, tune: TuneConfig, bf16: bool, device: str, processes: int = 1, examples: Any = (),
               shards: int = 1) -> Estimate:  # fmt: skip
    """Estimate the tune of a loaded-but-weightless :class:`~nomoat.finetune.basemodel.Base` on ``examples``
    (:class:`~nomoat.finetune.trainset.Example` rows; none: the worst case) and check it fits."""
    from nomoat.llm.models import describe

    info = describe(base.ref)
    rows = None
    if examples:
        rows = (max(len(e.ids) for e in examples), max(sum(t >= 0 for t in e.labels) for e in examples))
    plan = estimate(base.config, int(info.get("parameters") or 0), tune, bf16, rows=rows,
                    file_bytes=info["bytes"] if base.ref.kind == "gguf" else 0, processes=processes,
                    shards=shards)  # fmt: skip
    check(plan, device)
    return plan
