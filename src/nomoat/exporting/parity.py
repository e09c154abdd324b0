"""Parity, the gate every GGUF export passes before it is delivered: perplexity of held-out tokens under
llama.cpp (the written file) vs the merged torch model on the same tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nomoat.errors import UserError
from nomoat.finetune import basemodel, trainset

PARITY = {"f16": 0.02, "q8_0": 0.02, "q4_0": 0.15, "q4_k_m": 0.10}  # allowed relative perplexity gap per GGUF_QUANTS
ADAPTER_PARITY = 0.03  # base GGUF (as shipped) + adapter GGUF in llama.cpp vs the merged fp32 torch model
PARITY_TOKENS = 512


def parity_tokens(base: basemodel.Base, config: dict[str, Any]) -> list[int]:
    """Held-out text (the run's eval rows, else its training rows) as one window of tokens."""
    from nomoat.dataset.formats import read_rows

    encoder = trainset.ChatEncoder(base.tokenizer, base.chat_template)
    tokens: list[int] = []
    for source in (config.get("eval_data"), config["data"]):
        if not source:
            continue
        for _, row, _ in read_rows(source):
            if row is not None:
                tokens += encoder.encode(row["messages"])[0]
            if len(tokens) >= PARITY_TOKENS:
                return tokens[:PARITY_TOKENS]
    if len(tokens) < 16:
        raise UserError("not enough text in the run's data to check the export's parity")
    return tokens


def parity(path: Path, model: Any, tokens: list[int], limit: float, lora: Path | None = None) -> dict[str, Any]:
    """Perplexity of the same tokens under llama.cpp (the exported file) and the merged torch model."""
    import torch

    from nomoat.llm import llamacpp

    measured = llamacpp.perplexity(path, tokens, lora=lora)
    with torch.no_grad():
        ids = torch.tensor([tokens])
        ppl_torch = math.exp(float(model(input_ids=ids, labels=ids).loss))
    gap = abs(measured["ppl"] - ppl_torch) / ppl_torch
    return {"ppl_gguf": round(measured["ppl"], 4), "ppl_torch": round(ppl_torch, 4), "gap": round(gap, 5),
            "passed": gap <= limit, "prefill_tok_s": round(measured["prefill_tok_s"], 1),
            "decode_tok_s": round(measured["decode_tok_s"], 1)}  # fmt: skip


def require(report: dict[str, Any], limit: float, what: str) -> None:
    """UserError (nothing is delivered) when ``report`` failed its parity check."""
    if not report["passed"]:
        raise UserError(
            f"{what} failed its parity check: perplexity {report['ppl_gguf']:.3f} under llama.cpp vs "
            f"{report['ppl_torch']:.3f} in torch ({report['gap']:.1%} > {limit:.0%}); not delivered"
        )
