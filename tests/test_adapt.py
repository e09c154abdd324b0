"""kb adapt: pseudo queries, the document-level ranking, training that fits, the keep-only-if-better gate, the
KB's record of its query encoder (used by search, shown by kb info, dropped with the vectors it was made for,
undone), and kills at random moments that never leave the KB inconsistent."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nomoat.adapt import queries, train
from nomoat.adapt.run import adapt, format_adapt
from nomoat.config import AdaptConfig
from nomoat.errors import UserError
from nomoat.kb import catalog, ingest, queryenc, retrieval, store
from nomoat.kb.embeddings import OnnxEmbedder, build_onnx, minilm_dir

TOPICS = {
    "baking": "flour yeast dough oven crust loaf knead proof bake rye sourdough starter",
    "sailing": "mast sail keel rudder tack jib hull anchor harbour wind starboard port",
    "gardening": "soil compost seed prune weed mulch bulb hedge rose tomato trowel spade",
    "astronomy": "planet star comet orbit telescope galaxy nebula lunar eclipse meteor crater",
    "cycling": "saddle pedal chain gear brake spoke tyre frame helmet derailleur cadence",
    "chess": "pawn bishop knight rook queen king castle gambit checkmate opening endgame",
    "pottery": "clay kiln glaze wheel slip bisque throw trim stoneware porcelain vase",
    "beekeeping": "hive queen drone worker honey comb frame smoker swarm nectar pollen",
}


SHARED = [
    "note",
    "page",
    "part",
    "item",
    "entry",
    "record",
    "list",
    "thing",
    "matter",
    "case",
    "point",
    "way",
    "step",
    "side",
    "kind",
    "sort",
]


def _corpus(folder: Path, seed: int = 0) -> Path:
    """One Markdown file per topic: sections of sentences mostly of words every file shares, a few of the topic's
    own (so telling the files apart takes learning which words matter)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for topic, words in TOPICS.items():
        vocab = words.split()
        sections = []
        for s in range(8):
            lines = [f"## {vocab[s].capitalize()} and {vocab[s + 1]} notes"]
            for _ in range(4):
                said = [rng.choice(vocab) if rng.random() < 0.3 else rng.choice(SHARED) for _ in range(10)]
                lines.append("The " + " ".join(said) + ".")
            sections.append("\n".join(lines))
        (folder / f"{topic}.md").write_text(f"# {topic}\n\n" + "\n\n".join(sections) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT with MiniLM's real tokenizer, as a sentence-transformers folder."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-encoder")
    shutil.copyfile(minilm_dir() / "tokenizer.json", folder / "tokenizer.json")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    build_onnx(folder, folder / "model.onnx")
    return folder


def _embedder(folder: Path) -> OnnxEmbedder:
    return OnnxEmbedder(folder / "model.onnx", folder, name="tiny-bert@1")


CONFIG = AdaptConfig(batch_size=8, learning_rate=1e-3, max_query_tokens=32)


@pytest.fixture()
def toy_kb(nomoat_home: Path, tmp_path: Path, tiny_encoder: Path) -> str:
    ingest.run([_corpus(tmp_path / "docs")], "toy", embedder=_embedder(tiny_encoder), progress=False)
    return "toy"


def test_pseudo_queries_mix_headings_extracts_and_sentences() -> None:
    text = "A worktree is a checkout of a branch in its own folder.\n\nUse it to build two branches at once."
    rows = [(1, "/d/git-worktree.html", "git-worktree", "Manage > Several working trees", text)]
    found = queries.pseudo_queries(rows, random.Random(0))
    kinds = [q.kind for q in found]
    assert kinds[0] == "heading" and found[0].text == "Several working trees"
    assert "extract" in kinds and "sentence" in kinds
    assert all(q.chunk_id == 1 and q.document == "/d/git-worktree.html" for q in found)
    # the same question claimed by two chunks teaches nothing: both copies go
    twice = queries.pseudo_queries([rows[0], (2, "/d/other.html", "other", "", text)], random.Random(0))
    assert not {q.text for q in twice if q.kind == "extract"} & {q.text for q in found if q.kind == "extract"}


def test_sentence_queries_drop_the_documents_name_words_sometimes() -> None:
    text = "The stash command saves your local modifications away (case {}) and reverts the working directory."
    rows = [(i, f"/d{i}/git-stash.html", "git stash", "", text.format(i)) for i in range(40)]
    said = [q.text for q in queries.pseudo_queries(rows, random.Random(1), per_chunk=5) if q.kind == "sentence"]
    assert any("stash" not in s for s in said) and any("stash" in s for s in said)


def test_rank_documents_judges_by_document() -> None:
    vectors = np.eye(4, dtype=np.float32)  # chunk i points along axis i
    documents = ["a", "a", "b", "c"]
    q = np.array([[0.0, 1.0, 0.9, 0.0], [0.0, 0.0, 0.5, 1.0]], np.float32)
    out = train.rank_documents(q, vectors, documents, ["b", "b"], k=10)
    # query 1: a (chunk 1) then b -> rank 2; query 2: c then b -> rank 2
    assert out["recall@1"] == 0.0 and out["recall@5"] == 1.0 and out["mrr"] == 0.5


def test_training_fits_the_knowledge_base(toy_kb: str, tiny_encoder: Path) -> None:
    with store.connect(toy_kb) as conn:
        ids, vectors = store.all_vectors(conn)
        chunks = store.all_chunks_to_embed(conn)
    documents = [c[1] for c in chunks]
    found = queries.pseudo_queries(chunks, random.Random(0))
    rows = {cid: i for i, cid in enumerate(ids)}
    texts, answers = [q.text for q in found], [q.document for q in found]
    before = train.rank_documents(_embedder(tiny_encoder).embed(texts), vectors, documents, answers)
    fit = AdaptConfig(**{**CONFIG.__dict__, "anchor": 0.0})
    model, stats = train.train(tiny_encoder, texts, [rows[q.chunk_id] for q in found], vectors, documents, 8.0, fit)
    tok = train._tokenizer(tiny_encoder, 32)
    import torch

    with torch.no_grad():
        tuned = train.encode(model, tok, texts).numpy()
    after = train.rank_documents(tuned, vectors, documents, answers)
    assert stats["steps"] > 5 and stats["loss_end"] < stats["loss_start"]
    assert after["recall@1"] > before["recall@1"] + 0.1, (before, after)


def test_adapt_keeps_an_encoder_only_if_it_is_better(toy_kb: str, tiny_encoder: Path) -> None:
    emb = _embedder(tiny_encoder)
    refused = adapt(toy_kb, time_budget=8, base_dir=tiny_encoder, embedder=emb,
                    config=AdaptConfig(**{**CONFIG.__dict__, "min_gain": 2.0}))  # fmt: skip
    assert refused["kept"] is False and refused["encoder"] is None
    with store.connect(toy_kb) as conn:
        assert queryenc.record(conn) is None
    assert queryenc.folders(toy_kb) == []  # nothing left behind
    assert "not kept" in format_adapt(refused)

    kept = adapt(toy_kb, time_budget=8, base_dir=tiny_encoder, embedder=emb,
                 config=AdaptConfig(**{**CONFIG.__dict__, "min_gain": -1.0}))  # fmt: skip
    assert kept["kept"] is True and Path(kept["encoder"]).is_dir()
    assert kept["queries"]["train"] > 0 and kept["held_out"]["after"]["recall@5"] >= 0
    with store.connect(toy_kb) as conn:
        rec = queryenc.record(conn)
        assert rec["for"] == "tiny-bert@1" and len(rec["sha256"]) == 64
        assert store.verify(conn) == []
    assert queryenc.folders(toy_kb) == [Path(kept["encoder"])]
    assert catalog.kb_info(toy_kb)["query_encoder"].startswith("adapted (")


def test_search_ranks_with_the_adapted_encoder_and_reports_stock_cosines(
    toy_kb: str, tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = _embedder(tiny_encoder)
    stock_hits = retrieval.search("knead the dough", toy_kb, 5, embedder=emb)
    adapt(toy_kb, time_budget=8, base_dir=tiny_encoder, embedder=emb,
          config=AdaptConfig(**{**CONFIG.__dict__, "min_gain": -1.0}))  # fmt: skip
    used: list[str] = []
    real = OnnxEmbedder.embed

    def spy(self: OnnxEmbedder, texts: list[str]) -> np.ndarray:
        used.append(self.name)
        return real(self, texts)

    monkeypatch.setattr(OnnxEmbedder, "embed", spy)
    hits = retrieval.search("knead the dough", toy_kb, 5, embedder=emb)
    assert any(n.startswith("tiny-bert@1+query-") for n in used) and "tiny-bert@1" in used
    # the cosine shown (and used for abstention) is the stock encoder's, whatever ranks the hits
    with store.connect(toy_kb) as conn:
        stock = store.cosines(conn, emb.embed(["knead the dough"])[0], [h["chunk_id"] for h in hits])
    assert all(abs(h["cosine"] - stock[h["chunk_id"]]) < 1e-5 for h in hits)
    assert stock_hits  # searching worked before too


def test_undo_and_a_changed_embedder_drop_the_record(toy_kb: str, tiny_encoder: Path) -> None:
    emb = _embedder(tiny_encoder)
    config = AdaptConfig(**{**CONFIG.__dict__, "min_gain": -1.0})
    adapt(toy_kb, time_budget=8, base_dir=tiny_encoder, embedder=emb, config=config)
    assert adapt(toy_kb, undo=True) == {"kb": toy_kb, "undone": True}
    with store.connect(toy_kb) as conn:
        assert queryenc.record(conn) is None
    assert queryenc.folders(toy_kb) == []
    adapt(toy_kb, time_budget=8, base_dir=tiny_encoder, embedder=emb, config=config)
    with store.connect(toy_kb) as conn, store.transaction(conn):
        store.set_embedder(conn, "other@1", 16)  # the vectors the encoder was made for are gone
    with store.connect(toy_kb) as conn:
        assert queryenc.record(conn) is None


def test_a_changed_encoder_file_falls_back_to_the_stock_one(
    toy_kb: str, tiny_encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emb = _embedder(tiny_encoder)
    kept = adapt(toy_kb, time_budget=8, base_dir=tiny_encoder, embedder=emb,
                 config=AdaptConfig(**{**CONFIG.__dict__, "min_gain": -1.0}))  # fmt: skip
    model = Path(kept["encoder"]) / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    from nomoat.kb import embeddings

    embeddings._load_folder.cache_clear()
    queryenc._warned.clear()
    assert retrieval.search("knead the dough", toy_kb, 3, embedder=emb)
    assert "kb adapt --undo" in capsys.readouterr().err


def test_adapt_refuses_what_it_cannot_do(nomoat_home: Path, tmp_path: Path, tiny_encoder: Path) -> None:
    with pytest.raises(UserError, match="no knowledge base"):
        adapt("missing")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.md").write_text("# A\n\nThe only document here says very little at all.\n")
    ingest.run([tmp_path / "one"], "small", embedder=_embedder(tiny_encoder), progress=False)
    with pytest.raises(UserError, match="needs 4"):
        adapt("small", base_dir=tiny_encoder, embedder=_embedder(tiny_encoder))
    with pytest.raises(UserError, match="kb adapt tunes"):
        adapt("small")  # vectors from another model than the stock one
    with pytest.raises(UserError, match="--time"):
        adapt("small", time_budget="soon", base_dir=tiny_encoder, embedder=_embedder(tiny_encoder))


KILLED_RUN = """
import sys
from pathlib import Path
from nomoat.adapt.run import adapt
from nomoat.config import AdaptConfig
from nomoat.kb.embeddings import OnnxEmbedder
folder = Path(sys.argv[1])
emb = OnnxEmbedder(folder / "model.onnx", folder, name="tiny-bert@1")
config = AdaptConfig(batch_size=8, learning_rate=1e-3, max_query_tokens=32, min_gain=-1.0)
print(adapt("toy", time_budget=float(sys.argv[2]), base_dir=folder, embedder=emb, config=config)["kept"])
"""


def test_sigkill_at_random_moments_never_breaks_the_kb(toy_kb: str, tiny_encoder: Path, tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    rng = random.Random(7)
    emb = _embedder(tiny_encoder)
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, str(script), str(tiny_encoder), "6"], stdout=subprocess.PIPE)
        time.sleep(rng.uniform(0.5, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with store.connect(toy_kb) as conn:
            assert store.verify(conn) == []
            rec = queryenc.record(conn)
            if rec is not None:  # a record always names a whole, unaltered encoder
                assert (queryenc.folder(toy_kb, rec["sha256"]) / "model.onnx").is_file()
        assert retrieval.search("the oven crust", toy_kb, 3, embedder=emb)
    done = subprocess.run([sys.executable, str(script), str(tiny_encoder), "6"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
    with store.connect(toy_kb) as conn:
        rec = queryenc.record(conn)
    assert queryenc.folders(toy_kb) == [queryenc.folder(toy_kb, rec["sha256"])]  # leftovers of the kills removed
