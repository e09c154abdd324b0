"""LoRA training speed and quality: ``nomoat tune`` vs a plain Hugging Face ``Trainer`` + PEFT, in one run.

    python -u bench/tune.py                      # 40 steps each (~15 min on 2 cores)
    python -u bench/tune.py --steps 20 --rows 1000

Both train the bundled SmolLM2-135M (dequantized from its GGUF) with LoRA rank 16 on every linear projection
(PEFT's "all-linear"), on the same tokenized rows (chat template applied, loss on assistant tokens only), with
the same batch size, peak learning rate, warm-up, gradient clipping, maximum length and number of steps. The
baseline keeps ``Trainer``'s defaults otherwise: fp32, random batches padded to their longest row
(``DataCollatorForSeq2Seq``), full logits, a linear schedule.

Train tokens/s = real (non-padding) tokens trained on / seconds spent inside optimizer steps (forward,
backward, update), for both. Afterwards both adapters are loaded onto the fp32 base and scored by one function:
mean loss per assistant token on the same eval rows, so speed is not bought with quality.

Data: a dataset made by ``nomoat data build --no-model`` from Debian's git-doc knowledge base (built once into
bench/.cache; see bench/corpus.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import CACHE, git_doc_html  # noqa: E402

DATA = CACHE / "tune" / "git.jsonl"


def build_dataset(path: Path = DATA) -> Path:
    """git-doc → knowledge base → ``nomoat data build --no-model`` (cached)."""
    if path.exists():
        return path
    env = os.environ | {"NOMOAT_HOME": str(CACHE / "nomoat-home")}
    corpus = Path(tempfile.mkdtemp(prefix="nomoat-gitdoc-")) / "html"
    shutil.copytree(git_doc_html()[0].parent, corpus)
    nomoat = [sys.executable, "-m", "nomoat"]
    try:
        subprocess.run([*nomoat, "ingest", str(corpus), "--kb", "gitdoc", "--json"], env=env, check=True)
        subprocess.run([*nomoat, "data", "build", "--kb", "gitdoc", "--no-model", "-o", str(path)], env=env, check=True)
    finally:
        shutil.rmtree(corpus.parent, ignore_errors=True)
    return path


def subset(src: Path, dest: Path, rows: int, seed: int = 0) -> Path:
    lines = [line for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    dest.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    return dest


def run_nomoat(data: Path, out: Path, args: argparse.Namespace) -> dict:
    from nomoat.finetune import runs, tune

    tune.run(data, output=out, steps=args.steps, rank=args.rank, batch_size=args.batch_size, lr=args.lr,
             max_length=args.max_length, progress=True)  # fmt: skip
    steps = [r for r in runs.read_metrics(out) if r["step"] > 0]
    seconds = sum(r["tokens"] / r["tok_s"] for r in steps)
    tokens = sum(r["tokens"] for r in steps)
    return {"tokens": tokens, "seconds": seconds, "adapter": out / "adapter"}


def run_baseline(data: Path, out: Path, args: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from nomoat.finetune import basemodel, trainset

    base = basemodel.load("default")
    encoder = trainset.ChatEncoder(base.tokenizer, base.chat_template)
    rows = trainset.load(data, encoder, args.max_length)
    dataset = [{"input_ids": e.ids, "labels": e.labels} for e in rows]
    model = get_peft_model(
        base.load_weights(torch.float32),
        LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear",
                   task_type="CAUSAL_LM"),
    )  # fmt: skip

    class StepTimer(TrainerCallback):
        seconds = 0.0

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            StepTimer.seconds += time.perf_counter() - self.t

    if base.tokenizer.pad_token is None:
        base.tokenizer.pad_token = base.tokenizer.eos_token
    training_args = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=10, logging_steps=10, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(base.tokenizer, padding="longest"), callbacks=[StepTimer()],
    )  # fmt: skip
    trainer.train()
    model.save_pretrained(str(out / "adapter"), safe_serialization=True)
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"tokens": tokens, "seconds": StepTimer.seconds, "adapter": out / "adapter"}


def eval_losses(adapters: dict[str, Path], eval_path: Path, args: argparse.Namespace) -> dict[str, float]:
    """Mean loss per assistant token on the eval rows, fp32: the base ("before") and base + each adapter."""
    import torch
    from peft import PeftModel

    from nomoat.config import TuneConfig
    from nomoat.finetune import basemodel, training, trainset

    base = basemodel.load("default")
    encoder = trainset.ChatEncoder(base.tokenizer, base.chat_template)
    rows = trainset.load(eval_path, encoder, args.max_length, skip_invalid=True)[: args.eval_rows]
    names = list(adapters)
    model = PeftModel.from_pretrained(base.load_weights(torch.float32), str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    score = lambda: training.evaluate(training.CausalLoss(model), rows, TuneConfig(), training.Dist(), bf16=False)  # noqa: E731
    with model.disable_adapter():
        losses = {"before": score()}
    for name in names:
        model.set_adapter(name)
        losses[name] = score()
    return losses


def ablation(data: Path, args: argparse.Namespace, batches: int = 8) -> None:
    """What each of nomoat's choices is worth: train tokens/s on the same batches, one change at a time."""
    import torch

    from nomoat.config import TuneConfig
    from nomoat.finetune import basemodel, training, trainset

    config = TuneConfig(rank=args.rank, batch_size=args.batch_size)
    base = basemodel.load("default")
    encoder = trainset.ChatEncoder(base.tokenizer, base.chat_template)
    rows = trainset.load(data, encoder, args.max_length)
    grouped = training.Data(rows, config, 1)
    shuffled = [rows[i : i + args.batch_size] for i in range(0, batches * args.batch_size, args.batch_size)]
    weights = base.load_weights(torch.float32)
    variants = [  # (name, bf16, logits only where labelled, length-grouped batches)
        ("fp32, full logits, random batches (Trainer-like)", False, False, False),
        ("bf16 autocast", True, False, False),
        ("bf16 + logits only on labelled tokens", True, True, False),
        ("bf16 + labelled logits + length-grouped batches (nomoat)", True, True, True),
    ]
    baseline = None
    for name, bf16, selected, grouped_batches in variants:
        model = training.add_lora(copy.deepcopy(weights), config, bf16)
        params = [p for _, p in training.trainable(model)]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        selective = training.CausalLoss(model)
        chosen = [grouped.batch(s, 0) for s in range(batches)] if grouped_batches else shuffled
        seconds = tokens = 0.0
        for i, batch in enumerate([chosen[0], *chosen]):  # the first is a warm-up, not timed
            ids, labels = trainset.collate(batch)
            t = time.perf_counter()
            with training.autocast("cpu", bf16):
                loss = selective(ids, labels) if selected else model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:
                seconds += time.perf_counter() - t
                tokens += sum(len(e.ids) for e in batch)
        rate = tokens / seconds
        baseline = baseline or rate
        print(f"{name:60s} {rate:7.0f} tok/s  {rate / baseline:5.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="train JSONL (default: built from git-doc); DATA.eval.jsonl beside it")
    ap.add_argument("--rows", type=int, default=2000, help="train rows sampled from the dataset")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--eval-rows", type=int, default=200)
    ap.add_argument("--parts", default="compare,ablation", help="compare (vs Trainer + PEFT) and/or ablation")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["NOMOAT_HOME"] = tempfile.mkdtemp(prefix="nomoat-bench-tune-")
    source = args.data or build_dataset()
    work = Path(os.environ["NOMOAT_HOME"])
    data = subset(source, work / "train.jsonl", args.rows)
    eval_path = source.with_name(source.stem + ".eval.jsonl")  # scored once at the end, the same way for both

    if "ablation" in args.parts:
        print("\nablation: train tokens/s on the same rows, one change at a time", flush=True)
        ablation(data, args)
    if "compare" not in args.parts:
        return
    ours = run_nomoat(data, work / "nomoat", args)
    theirs = run_baseline(data, work / "baseline", args)
    print("\nscoring both adapters on the same eval rows (fp32) ...", flush=True)
    losses = eval_losses({"nomoat": ours["adapter"], "baseline": theirs["adapter"]}, eval_path, args)
    start = losses["before"]
    result = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "rank": args.rank,
        "max_length": args.max_length,
        "train_rows": args.rows,
        "eval_rows": args.eval_rows,
        "eval_loss_before": round(start, 4),
    }
    for name, r in (("nomoat", ours), ("baseline", theirs)):
        result[name] = {
            "train_tokens": r["tokens"],
            "step_seconds": round(r["seconds"], 1),
            "train_tok_s": round(r["tokens"] / r["seconds"], 1),
            "eval_loss": round(losses[name], 4),
        }
    result["speedup"] = round(result["nomoat"]["train_tok_s"] / result["baseline"]["train_tok_s"], 2)
    print(json.dumps(result, indent=2))
    print(
        f"\ntrain tokens/s: nomoat {result['nomoat']['train_tok_s']:.0f} vs Trainer+PEFT "
        f"{result['baseline']['train_tok_s']:.0f} = {result['speedup']:.2f}x; eval loss {start:.4f} before, "
        f"nomoat {losses['nomoat']:.4f}, baseline {losses['baseline']:.4f}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
