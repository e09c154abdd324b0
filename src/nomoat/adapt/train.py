"""Training the query encoder, and measuring it.

The knowledge base keeps its document vectors; only the side that embeds *questions* is tuned. A pseudo query's
vector is pulled towards its chunk's stored vector and away from every chunk of every other document: an InfoNCE
loss whose negatives are the whole knowledge base (12k chunks are one (batch, 12k) matrix product), so the hardest
negatives BM25 or vectors would mine are always among them. Chunks of the query's own document are left out of
the loss, as search judges hits by document. A second term keeps each query's vector near where the stock model
put it, so the encoder adapts to the corpus rather than forgetting English (measured: docs/benchmarks.md).

Why the query side only: the stored vectors stay valid, so adapting needs no re-embedding (minutes on 2 cores for
12k chunks, a window in which a crash could leave two embedders' vectors), ingest keeps using the stock model,
and undoing it is forgetting one file. Backward passes run over short queries, not 256-token chunks, so the same
time budget trains on ~10x more examples.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nomoat.config import AdaptConfig

if TYPE_CHECKING:
    import torch


def _tokenizer(base_dir: Path, max_tokens: int) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


def encode(model: torch.nn.Module, tok: Any, texts: Sequence[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised token states of ``texts`` (the embedder's own pooling): ``(len(texts), dim)``."""
    import torch

    ids = [e.ids for e in tok.encode_batch(list(texts))]
    width = max(len(i) for i in ids)
    batch = torch.zeros((len(ids), width), dtype=torch.long)  # (b, t), 0 = [PAD] in BERT vocabularies
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (b, t)
    for r, row in enumerate(ids):
        batch[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    states = model(input_ids=batch, attention_mask=mask).last_hidden_state  # (b, t, d)
    m = mask.unsqueeze(-1).to(states.dtype)
    return torch.nn.functional.normalize((states * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def train(
    base_dir: Path,
    texts: Sequence[str],
    positives: Sequence[int],
    vectors: np.ndarray,
    documents: Sequence[str],
    seconds: float,
    config: AdaptConfig,
    progress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Tune the encoder at ``base_dir`` for ``seconds`` on queries ``texts`` whose answers are rows ``positives``
    of ``vectors`` (``(n, dim)``, the stored chunk vectors; ``documents[i]`` is row i's document).

    Returns the tuned model (eval mode) and ``{"steps", "examples", "seconds", "loss_start", "loss_end"}``.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    torch.manual_seed(config.seed)
    tok = _tokenizer(base_dir, config.max_query_tokens)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own bar says what is happening
    model = AutoModel.from_pretrained(base_dir)
    # The 30k-word embedding table is half the weights and would get updates for only the words seen: frozen.
    for p in model.embeddings.parameters():
        p.requires_grad_(False)
    docs = torch.from_numpy(np.array(vectors, np.float32))  # a writable copy  # (n, d)
    doc_ids = {d: i for i, d in enumerate(dict.fromkeys(documents))}
    row_doc = torch.tensor([doc_ids[d] for d in documents])  # (n,)
    pos = torch.tensor(list(positives))  # (q,)
    stock = copy.deepcopy(model).eval()  # where each query's vector started: the anchor term's reference
    anchors: dict[int, torch.Tensor] = {}  # filled as queries come up: a short budget never sees most of them

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed)
    order, cursor, steps, losses = torch.randperm(len(texts), generator=gen), 0, 0, []
    start = time.perf_counter()
    model.train()
    with tqdm(total=round(seconds), desc="adapt: training", unit="s", file=sys.stderr, disable=not progress) as bar:
        while (elapsed := time.perf_counter() - start) < seconds:
            if cursor >= len(order):
                order, cursor = torch.randperm(len(texts), generator=gen), 0
            idx = order[cursor : cursor + config.batch_size]
            cursor += len(idx)
            batch = [texts[i] for i in idx.tolist()]
            q = encode(model, tok, batch)  # (b, d)
            anchor = _anchors(stock, tok, batch, idx.tolist(), anchors)  # (b, d)
            scores = config.scale * (q @ docs.T)  # (b, n)
            own = row_doc[None, :] == row_doc[pos[idx]][:, None]  # (b, n): same document as the answer
            own[torch.arange(len(idx)), pos[idx]] = False
            loss = torch.nn.functional.cross_entropy(scores.masked_fill(own, float("-inf")), pos[idx])
            loss = loss + config.anchor * (1 - (q * anchor).sum(-1)).mean()
            # warm up over 20 steps, then decay linearly to zero at the end of the time budget
            for group in opt.param_groups:
                group["lr"] = config.learning_rate * min(1.0, (steps + 1) / 20) * max(0.0, 1 - elapsed / seconds)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            losses.append(float(loss.detach()))
            bar.update(min(round(time.perf_counter() - start), round(seconds)) - bar.n)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
    model.eval()
    head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10) :]
    stats = {"steps": steps, "examples": steps * config.batch_size, "seconds": round(time.perf_counter() - start, 1),
             "loss_start": round(float(np.mean(head)), 4) if losses else None,
             "loss_end": round(float(np.mean(tail)), 4) if losses else None}  # fmt: skip
    return model, stats


def _anchors(
    stock: torch.nn.Module, tok: Any, batch: list[str], idx: list[int], cache: dict[int, torch.Tensor]
) -> torch.Tensor:
    import torch

    missing = [j for j, i in enumerate(idx) if i not in cache]
    if missing:
        with torch.no_grad():
            fresh = encode(stock, tok, [batch[j] for j in missing])
        for j, v in zip(missing, fresh, strict=True):
            cache[idx[j]] = v
    return torch.stack([cache[i] for i in idx])


def save(model: Any, base_dir: Path, folder: Path) -> Path:
    """Write ``model`` as an int8 ONNX embedder folder (``model.onnx`` + the base's tokenizer files)."""
    import shutil
    import tempfile

    from nomoat.kb.embeddings import build_onnx

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "sentence_bert_config.json"):
        if (base_dir / name).exists():
            shutil.copyfile(base_dir / name, folder / name)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # the weights only live until the export has read them
        model.save_pretrained(tmp, safe_serialization=True)
        return build_onnx(Path(tmp), folder / "model.onnx")


def rank_documents(
    queries: np.ndarray, vectors: np.ndarray, documents: Sequence[str], answers: Sequence[str], k: int = 10
) -> dict[str, float]:
    """recall@1/5/10 and MRR@10 of vector search judged by document, as ``search`` reports (one chunk each)."""
    scores = queries @ vectors.T  # (q, n)
    pool = min(len(documents), k * 20)
    ranks = []
    for row, answer in zip(scores, answers, strict=True):
        top = np.argpartition(-row, pool - 1)[:pool]
        seen: list[str] = []
        for i in top[np.argsort(-row[top], kind="stable")]:
            if documents[i] not in seen:
                seen.append(documents[i])
            if len(seen) == k:
                break
        ranks.append(seen.index(answer) + 1 if answer in seen else None)
    n = max(len(ranks), 1)
    out = {f"recall@{c}": round(sum(r is not None and r <= c for r in ranks) / n, 4) for c in (1, 5, 10)}
    out["mrr"] = round(sum(1 / r for r in ranks if r) / n, 4)
    return out
