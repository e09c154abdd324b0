"""The mechanics of ``nomoat tune`` (LoRA on a CPU or GPUs): devices, the loss, the schedule, the plan,
the data order, eval loss and checkpoint tensors. :mod:`nomoat.tune` drives them.

What makes it fast on a CPU (measured in docs/benchmarks.md against HF ``Trainer`` + PEFT):

* bf16 autocast with the frozen base weights stored in bf16, where the CPU has bf16 arithmetic;
* length-grouped batches, so little compute goes to padding (see :mod:`nomoat.trainset`);
* logits only where there is a label: the LM head (a 49k-vocabulary matmul) runs on assistant tokens only;
* no attention mask (right padding under causal attention needs none), so SDPA takes its causal fast path.

Exact resume: the data order is a pure function of (seed, epoch), the learning rate a pure function of the
step, and a checkpoint holds the LoRA weights, the AdamW moments and the RNG state, all as safetensors.
Under ``torchrun`` each process takes its share of every step's batches and DDP averages the gradients; with
``fsdp`` the weights are sharded over the processes instead (FSDP2, torch's ``fully_shard``), each decoder layer
gathered whole only while it runs, so a base too big for one device trains on several.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nomoat.config import TuneConfig
from nomoat.errors import UserError
from nomoat.finetune import trainset


# -- processes and devices ---------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist() -> Dist:
    """One process, or one of ``torchrun``'s: gloo on CPUs, NCCL on GPUs. CUDA when present, else CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device != "cpu" else "gloo")
    if device != "cpu":
        torch.cuda.set_device(device)
    return Dist(int(os.environ.get("RANK", "0")), world, local, device)


def all_reduce(value: float, dist: Dist, op: str = "sum") -> float:
    if dist.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
    ops["min"] = torch.distributed.ReduceOp.MIN
    torch.distributed.all_reduce(t, ops[op])
    return float(t.item())


def any_of(flags: tuple[bool, ...], dist: Dist) -> tuple[bool, ...]:
    """Each flag OR-ed over all processes, in one collective call."""
    if dist.world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags])
    torch.distributed.all_reduce(t, torch.distributed.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def broadcast_path(path: Path | None, dist: Dist) -> Path:
    """The run folder chosen by rank 0, told to every process (as bytes in a tensor: no pickle)."""
    if dist.world == 1:
        assert path is not None
        return path
    data = torch.zeros(4096, dtype=torch.uint8)
    if dist.main:
        raw = str(path).encode()
        data[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    torch.distributed.broadcast(data, 0)
    return Path(bytes(data[data != 0].tolist()).decode())


def use_bf16(precision: str, device: str) -> bool:
    if precision not in {"auto", "bf16", "fp32"}:
        raise UserError(f"--precision must be auto, bf16 or fp32 (got {precision!r})")
    if precision != "auto":
        return precision == "bf16"
    if device != "cpu":
        return torch.cuda.is_bf16_supported()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx512_bf16" in flags or " amx_bf16" in flags


# -- the model -----------------------------------------------------------------------------------
class CausalLoss(torch.nn.Module):
    """Mean cross-entropy over labelled tokens, computing logits for those tokens only.

    A module (not a function) so DDP/FSDP can wrap it. Logits are ``head(hidden)``, soft-capped as the model
    does when its config says so (Gemma 2: ``cap * tanh(logits / cap)``)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # a PeftModel, or a plain causal LM

    def forward(self, ids: Any, labels: Any) -> Any:
        lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = getattr(lm, lm.base_model_prefix)(input_ids=ids).last_hidden_state
        target = labels[:, 1:]
        keep = target != trainset.IGNORE
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        return torch.nn.functional.cross_entropy(logits, target[keep])


def add_lora(model: Any, config: TuneConfig, bf16: bool) -> Any:
    """Wrap ``model`` with LoRA on every linear projection of attention and MLP (not the LM head), in the top
    ``config.lora_layers`` share of its layers."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha or 2 * config.rank,
        lora_dropout=config.dropout,
        target_modules="all-linear" if config.lora_layers >= 1 else top_linear_modules(model, config.lora_layers),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5; nothing for users to do
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, lora)
    if bf16:  # frozen weights in bf16: half the memory, no per-step casts under autocast; LoRA stays fp32
        for p in peft_model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    return peft_model


def lora_layer_indices(layers: int, share: float) -> list[int]:
    """The top ``share`` of ``layers`` (at least one): training only the top ones means no gradient flows, and no
    activation is kept, below the lowest of them."""
    return list(range(layers - max(1, math.ceil(layers * share - 1e-9)), layers))


def top_linear_modules(model: Any, share: float) -> list[str]:
    """Names of the linear projections in the top ``share`` of the decoder layers (PEFT takes a layer subset only
    with a list of module names, not with "all-linear")."""
    import re

    keep = set(lora_layer_indices(model.config.num_hidden_layers, share))
    names = []
    for name, module in model.named_modules():
        layer = re.search(r"\.layers\.(\d+)\.", name)
        if layer and int(layer.group(1)) in keep and isinstance(module, torch.nn.Linear):
            names.append(name)
    return names


def shard(loss_model: CausalLoss, dist: Dist) -> None:
    """FSDP, in place: every decoder layer, then the rest (embeddings, final norm, head), split over the processes
    and moved to their device. Call before taking :func:`trainable`: sharding replaces the parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu" if dist.device == "cpu" else "cuda", (dist.world,))
    lm = loss_model.model.get_base_model() if hasattr(loss_model.model, "get_base_model") else loss_model.model
    for layer in getattr(lm, lm.base_model_prefix).layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(loss_model, mesh=mesh)  # the root: its forward gathers what no layer holds


def sharded(module: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def whole(tensor: Any) -> Any:
    """The full tensor of an FSDP shard (a collective: every process must call it), else ``tensor``."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(param: Any, tensor: Any) -> Any:
    """``tensor`` (a full tensor) laid out as ``param`` is: this process's shard of it under FSDP."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and tensor.shape == param.shape:
        return distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements)
    return tensor.to(param.device)


def trainable(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# -- schedule and plan ----------------------------------------------------------------------------
def learning_rate(step: int, total: int | None, config: TuneConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` x lr at ``total`` (flat until it is known)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if not total or total <= config.warmup_steps:
        return config.lr
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def plan_steps(start: int, seconds_left: float, step_cost: Callable[[int], float], limit: int = 10**7) -> int:
    """The last step count reachable in ``seconds_left`` when step ``s`` is predicted to take ``step_cost(s)``."""
    step, spent = start, 0.0
    while step < limit:
        spent += step_cost(step)
        if spent > seconds_left:
            break
        step += 1
    return step


def fit_step_cost(timed: list[tuple[float, int]]) -> Callable[[int], float]:
    """Seconds a step of ``n`` padded tokens takes: a + b*n fitted to (seconds, n) samples by least squares.

    The fixed part ``a`` matters: optimizer update, hundreds of small LoRA kernels and Python per step cost
    the same for a short batch as for a long one. With few or uniform samples, seconds per token alone."""
    if not timed:
        return lambda n: 0.0
    xs, ys = [n for _, n in timed], [s for s, _ in timed]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if len(timed) >= 8 and var > 0:
        b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
        a = mean_y - b * mean_x
        if a >= 0 and b >= 0:
            return lambda n: a + b * n
    per_token = sum(ys) / max(1, sum(xs))
    return lambda n: per_token * n


@dataclass
class Data:
    """Training rows and the deterministic batch order of every epoch."""

    train: list[trainset.Example]
    config: TuneConfig
    world: int
    _epochs: dict[int, list[list[int]]] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(math.ceil(len(self.train) / self.config.batch_size) / self.world))

    def batch(self, step: int, rank: int) -> list[trainset.Example]:
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch not in self._epochs:
            self._epochs = {
                epoch: trainset.epoch_batches(self.lengths, self.config.batch_size, self.config.seed, epoch)
            }
        batches = self._epochs[epoch]
        return [self.train[i] for i in batches[(index * self.world + rank) % len(batches)]]

    @property
    def lengths(self) -> list[int]:
        return [len(e.ids) for e in self.train]

    def padded_tokens(self, step: int, rank: int) -> int:
        rows = self.batch(step, rank)
        return len(rows) * max(len(e.ids) for e in rows)


# -- the loop ------------------------------------------------------------------------------------
class Stop:
    """Ctrl-C / SIGTERM ask for a clean stop after the current step; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[Stop]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


def evaluate(loss_model: Any, rows: list[trainset.Example], config: TuneConfig, dist: Dist, bf16: bool) -> float:
    """Token-weighted mean loss over the eval rows (sharded across processes)."""
    mine = rows[dist.rank :: dist.world]
    mine.sort(key=lambda e: len(e.ids))
    total = count = 0.0
    # Every process runs as many batches as the one with the most rows: under FSDP each forward is collective.
    batches = math.ceil(math.ceil(len(rows) / dist.world) / config.batch_size)
    loss_model.eval()
    with torch.no_grad(), autocast(dist.device, bf16):
        for i in range(0, batches * config.batch_size, config.batch_size):
            chunk = mine[i : i + config.batch_size]
            n = sum(e.trained_tokens for e in chunk)
            ids, labels = (t.to(dist.device) for t in trainset.collate(chunk or rows[:1]))  # none left: weight 0
            total += float(loss_model(ids, labels)) * n
            count += n
    loss_model.train()
    return all_reduce(total, dist) / max(1.0, all_reduce(count, dist))


def autocast(device: str, bf16: bool) -> Any:
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=bf16)


def side_by_side(model: Any, encoder: Any, chats: list, max_tokens: int, bf16: bool, fsdp_root: Any = None
                 ) -> list[dict[str, str]]:  # fmt: skip
    """Greedy answers of the base (adapter off) and the tuned model to the prompts of ``chats``.

    Under FSDP (``fsdp_root``: the sharded module) every process must call this: each forward is collective, so
    all generate exactly ``max_tokens`` tokens (none may stop early at its end token) and cut at it after."""
    tok = encoder.tokenizer
    device = next(model.parameters()).device
    lockstep = {"min_new_tokens": max_tokens} if fsdp_root is not None else {}

    def answer(ids: Any) -> str:
        with torch.no_grad(), autocast(str(device), bf16):
            out = model.generate(input_ids=ids, max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, **lockstep)  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        return tok.decode(new, skip_special_tokens=True).strip()

    if fsdp_root is not None:
        fsdp_root.unshard()  # the embeddings and head the root holds; generate runs the layers, not the root
    model.eval()
    rows = []
    for messages in chats:
        ids = torch.tensor([encoder.encode_prompt(messages[:-1])], device=device)
        with model.disable_adapter():
            base = answer(ids)
        rows.append({"prompt": messages[-2]["content"], "reference": messages[-1]["content"], "base": base,
                     "tuned": answer(ids)})  # fmt: skip
    model.train()
    if fsdp_root is not None:
        fsdp_root.reshard()
    return rows


def checkpoint_tensors(params: list[tuple[str, Any]], optimizer: Any) -> dict[str, Any]:
    """LoRA weights, AdamW moments and the RNG state, whole (gathered under FSDP: every process calls this)."""
    tensors = {f"param.{name}": whole(p.detach()) for name, p in params}
    for i, (_, p) in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"adam.{i}.{key}"] = whole(value) if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors


def restore(tensors: dict[str, Any], params: list[tuple[str, Any]], optimizer: Any) -> None:
    for i, (name, p) in enumerate(params):
        if f"param.{name}" not in tensors:
            raise UserError(f"the checkpoint does not match this model (no weights for {name})")
        p.data.copy_(like(p, tensors[f"param.{name}"]))
        state = {k.split(".", 2)[2]: like(p, v) for k, v in tensors.items() if k.startswith(f"adam.{i}.")}
        if state:
            optimizer.state[p] = state
    torch.set_rng_state(tensors["rng.torch"])
