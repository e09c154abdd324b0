"""nomoat tune on a tiny random Llama: masking, bad rows, learning, LoRA-only updates, exact resume, time
budget, crash-safe checkpoints and the CLI (torchrun: test_tune_distributed.py)."""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from nomoat.cli import main  # noqa: E402
from nomoat.config import TuneConfig  # noqa: E402
from nomoat.errors import UserError  # noqa: E402
from nomoat.finetune import basemodel, runs, training, trainset, tune  # noqa: E402
from nomoat.finetune import settings as tunesettings  # noqa: E402

COLOURS = ["red", "blue", "green", "amber"]


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Which colour is box {i}?"},
            {"role": "assistant", "content": f"Box {i} is {COLOURS[i % 4]}."},
        ]
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "boxes.eval.jsonl", [chat(i) for i in range(16, 20)])
    return write_jsonl(tmp_path / "boxes.jsonl", [chat(i) for i in range(16)])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> trainset.ChatEncoder:
    from tiny_gguf import write_tiny_llama

    base = basemodel.load(write_tiny_llama(tmp_path_factory.mktemp("enc") / "tiny.gguf"))
    return trainset.ChatEncoder(base.tokenizer, base.chat_template)


def adapter_tensors(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def quick(dataset: Path, model: Path, out: Path, **kw) -> dict:
    kw = {"steps": 6, "batch_size": 4, "lr": 1e-2, "rank": 4, "progress": False} | kw
    return tune.run(dataset, model=model, output=out, **kw)


# -- data -----------------------------------------------------------------------------------------
def test_loss_is_only_on_the_answer_and_its_end_of_turn(encoder: trainset.ChatEncoder) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "hello"},
    ]
    ids, labels = encoder.encode(messages)
    tok = encoder.tokenizer
    assert len(ids) == len(labels)
    assert tok.decode(ids) == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    trained = [t for t in labels if t != trainset.IGNORE]
    assert tok.decode(trained) == "hi there<|im_end|>hello<|im_end|>"
    # every labelled token is the token at that position (labels are not shifted here; the loss shifts)
    assert all(lab in (trainset.IGNORE, tid) for tid, lab in zip(ids, labels, strict=True))


def test_control_tokens_in_content_stay_text(encoder: trainset.ChatEncoder) -> None:
    im_end = encoder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids, _ = encoder.encode([{"role": "user", "content": "<|im_end|>"}, {"role": "assistant", "content": "ok"}])
    assert ids.count(im_end) == 2  # the template's two turn ends, not the user's look-alike


def test_prompt_ends_with_the_assistant_header(encoder: trainset.ChatEncoder) -> None:
    ids = encoder.encode_prompt([{"role": "user", "content": "hi"}])
    assert encoder.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_bad_rows_are_named_by_line(tmp_path: Path, encoder: trainset.ChatEncoder) -> None:
    no_answer = {"messages": [{"role": "user", "content": "hello?"}]}
    long = {"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "ok"}]}
    path = write_jsonl(tmp_path / "bad.jsonl", [chat(1), "{not json", no_answer, long, chat(2)])
    with pytest.raises(UserError) as err:
        trainset.load(path, encoder, max_length=128)
    message = str(err.value)
    assert "line 2" in message and "line 3" in message and "line 4: " in message and "128-token" in message
    kept = trainset.load(path, encoder, max_length=128, skip_invalid=True)
    assert [e.line for e in kept] == [1, 5]


def test_epoch_batches_are_length_grouped_and_deterministic() -> None:
    lengths = [(i * 37) % 100 + 1 for i in range(200)]
    a = trainset.epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a == trainset.epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a != trainset.epoch_batches(lengths, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(200))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in a)
    assert padded < 1.1 * sum(lengths)  # grouping leaves under 10% padding (random batches: ~60% here)


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    config = TuneConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    rates = [training.learning_rate(s, 20, config) for s in range(21)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(rates[4:]))
    assert rates[20] == pytest.approx(0.1)


def test_plan_fits_the_budget() -> None:
    cost = {s: 1.0 + (s % 3) for s in range(100)}  # 1, 2, 3 seconds repeating
    planned = training.plan_steps(10, 30.0, cost.__getitem__)
    assert sum(cost[s] for s in range(10, planned)) <= 30.0 < sum(cost[s] for s in range(10, planned + 1))


# -- training -------------------------------------------------------------------------------------
def test_loss_falls_on_a_memorisable_set(dataset: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    summary = quick(dataset, tiny_gguf, tmp_path / "run", steps=40)
    losses = [r["loss"] for r in runs.read_metrics(tmp_path / "run") if r["loss"] is not None]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert summary["eval_loss_end"] < summary["eval_loss_start"]
    assert summary["status"] == "complete" and summary["steps"] == 40


def test_only_lora_weights_change(dataset: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    import torch

    settings = tunesettings.new(dataset, str(tiny_gguf), None, 5, None, None, {"lr": 1e-2, "rank": 4}, 1)
    settings["tune"]["precision"] = "fp32"
    session = tune._Session.start(settings, tmp_path, training.Dist(), False, False, tune._now())
    before = {n: p.detach().clone() for n, p in session.model.named_parameters()}
    session.train(progress=False, on_step=None)
    changed = {n for n, p in session.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed) and any("mlp" in n for n in changed)
    saved = adapter_tensors(tmp_path)
    assert saved and all("lora_" in k for k in saved)


def test_lora_layers_trains_only_the_top_share_of_the_layers(dataset: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    import re

    import torch

    settings = tunesettings.new(dataset, str(tiny_gguf), None, 3, None, None, {"lr": 1e-2, "lora_layers": 0.5}, 1)
    session = tune._Session.start(settings, tmp_path, training.Dist(), False, False, tune._now())
    layers = session.model.get_base_model().config.num_hidden_layers
    before = {n: p.detach().clone() for n, p in session.model.named_parameters()}
    session.train(progress=False, on_step=None)
    changed = {n for n, p in session.model.named_parameters() if not torch.equal(p, before[n])}
    trained = {int(re.search(r"layers\.(\d+)\.", n).group(1)) for n in changed}
    assert trained == set(range(layers - layers // 2, layers))
    assert {int(re.search(r"layers\.(\d+)\.", k).group(1)) for k in adapter_tensors(tmp_path)} == trained
    assert training.lora_layer_indices(30, 1 / 3) == list(range(20, 30))
    assert training.lora_layer_indices(4, 0.01) == [3]  # never none


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(dataset: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    whole = quick(dataset, tiny_gguf, tmp_path / "whole", steps=10)

    def ctrl_c_at_4(record: dict) -> None:
        if record["step"] == 4:
            signal.raise_signal(signal.SIGINT)  # the real handler: finish the step, checkpoint, stop

    first = quick(dataset, tiny_gguf, tmp_path / "split", steps=10, on_step=ctrl_c_at_4)
    assert first["status"] == "stopped" and first["steps"] == 4
    second = tune.run(resume=tmp_path / "split", progress=False)
    assert second["status"] == "complete" and second["steps"] == whole["steps"] == 10
    a, b = adapter_tensors(tmp_path / "whole"), adapter_tensors(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in runs.read_metrics(tmp_path / "split")]
    assert steps == list(range(11))
    assert second["eval_loss_end"] == whole["eval_loss_end"]


KILLS = {  # where a child process SIGKILLs itself
    "before the first checkpoint": "kw['on_step'] = lambda r: r['step'] == 3 and os.kill(os.getpid(), signal.SIGKILL)",
    "after the last checkpoint": "tune._Session._save_adapter = lambda *a: os.kill(os.getpid(), signal.SIGKILL)",
}


@pytest.mark.parametrize("moment", KILLS)
def test_a_killed_run_resumes_to_what_an_uninterrupted_one_makes(
    dataset: Path, tiny_gguf: Path, tmp_path: Path, moment: str
) -> None:
    whole = quick(dataset, tiny_gguf, tmp_path / "whole", steps=6)
    code = (f"import os, signal, test_tune as t; from pathlib import Path; from nomoat.finetune import tune; "
            f"kw = {{}}; {KILLS[moment]}; "
            f"t.quick(Path({str(dataset)!r}), Path({str(tiny_gguf)!r}), Path({str(tmp_path / 'killed')!r}), steps=6, "
            f"**kw)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300).returncode == -9
    found = runs.load_checkpoint(tmp_path / "killed")
    assert (found is None) == (moment == "before the first checkpoint")  # a tiny run is over before checkpoint_every_s
    with pytest.raises(UserError, match="already holds a run"):  # -o again is refused: --resume is the way on
        quick(dataset, tiny_gguf, tmp_path / "killed")
    again = tune.run(resume=tmp_path / "killed", progress=False)
    assert again["status"] == "complete" and again["steps"] == whole["steps"] == 6
    a, b = adapter_tensors(tmp_path / "whole"), adapter_tensors(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in runs.read_metrics(tmp_path / "killed")] == list(range(7))
    with pytest.raises(UserError, match="complete"):
        tune.run(resume=tmp_path / "killed", progress=False)


def test_resume_refuses_a_new_plan_or_a_finished_run(dataset: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    quick(dataset, tiny_gguf, tmp_path / "r", steps=2)
    with pytest.raises(UserError, match="own data and plan"):
        tune.run(resume=tmp_path / "r", steps=5)
    with pytest.raises(UserError, match="complete"):
        tune.run(resume=tmp_path / "r", progress=False)
    with pytest.raises(UserError, match="already holds a run"):
        quick(dataset, tiny_gguf, tmp_path / "r")
    stopped = quick(dataset, tiny_gguf, tmp_path / "s", steps=4, on_step=lambda record: record["step"] == 1)
    assert stopped["status"] == "stopped"
    dataset.rename(dataset.with_suffix(".moved"))
    with pytest.raises(UserError, match="is gone"):
        tune.run(resume=tmp_path / "s", progress=False)


def test_time_budget_plans_steps_and_stops_on_time(
    dataset: Path, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]

    def fake_now() -> float:  # every look at the clock costs a second: a slow, deterministic machine
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(tune, "_now", fake_now)
    summary = quick(dataset, tiny_gguf, tmp_path / "t", steps=None, time="2m")
    assert summary["planned_steps"] is not None and summary["status"] == "complete"
    assert TuneConfig().plan_after < summary["steps"] <= summary["planned_steps"]
    assert summary["seconds"] <= 120
    config = runs.read_json(tmp_path / "t" / "config.json")
    assert config["budget"]["time_s"] == 120
    evals = [r["step"] for r in runs.read_metrics(tmp_path / "t") if "eval_loss" in r]
    assert evals == sorted(set(evals)) and len(evals) <= TuneConfig().evals + 2  # re-plans do not add evals


def test_a_short_budget_on_a_slow_machine_cuts_the_eval_rows_and_still_trains(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nomoat.finetune import training

    write_jsonl(tmp_path / "b.eval.jsonl", [chat(i) for i in range(100, 160)])  # 60 eval rows
    data = write_jsonl(tmp_path / "b.jsonl", [chat(i) for i in range(16)])
    clock = [1000.0]
    monkeypatch.setattr(tune, "_now", lambda: clock[0])
    evaluate, step = training.evaluate, tune._Session._step

    def slow_evaluate(model, rows, *args):  # 1 s per eval row
        clock[0] += len(rows)
        return evaluate(model, rows, *args)

    def slow_step(self):  # 5 s per step
        clock[0] += 5
        return step(self)

    monkeypatch.setattr(training, "evaluate", slow_evaluate)
    monkeypatch.setattr(tune._Session, "_step", slow_step)
    summary = quick(data, tiny_gguf, tmp_path / "r", steps=None, time="5m")
    # 60 rows x 12 passes would be 720 s of a 300 s budget; cut to 16 rows the passes take 15 % or so
    assert summary["steps"] > TuneConfig().plan_after and summary["eval_loss_start"] is not None
    _, state = runs.load_checkpoint(tmp_path / "r")
    assert state.eval_rows == TuneConfig().min_eval_rows


def test_a_failed_checkpoint_keeps_the_last_good_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    runs.save_checkpoint(tmp_path, {"w": torch.ones(3)}, runs.RunState(step=1))

    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError):
        runs.save_checkpoint(tmp_path, {"w": torch.zeros(3)}, runs.RunState(step=2))
    tensors, state = runs.load_checkpoint(tmp_path)
    assert state == runs.RunState(step=1) and torch.equal(tensors["w"], torch.ones(3))
    assert not (tmp_path / "checkpoint.partial").exists()
    # a crash between the two renames leaves only checkpoint.old: it is still found
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    assert runs.load_checkpoint(tmp_path)[1] == runs.RunState(step=1)


def test_disk_full_during_a_run_is_a_clear_error(
    dataset: Path, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "save_checkpoint", disk_full)
    with pytest.raises(UserError, match=r"No space left on device.*intact"):
        quick(dataset, tiny_gguf, tmp_path / "full", steps=2)


# -- the command ----------------------------------------------------------------------------------
def test_cli_writes_a_complete_run_folder(
    dataset: Path, tiny_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "cli-run"
    args = ["tune", str(dataset), "--model", str(tiny_gguf), "--steps", "3", "--rank", "4", "-o", str(run), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and len(summary["samples"]) == 3
    assert {"base", "tuned", "prompt"} <= summary["samples"][0].keys()
    manifest = runs.read_json(run / "manifest.json")
    assert manifest["base_model"]["sha256"] == basemodel.sha256_file(tiny_gguf)
    assert manifest["adapter"]["sha256"] == basemodel.sha256_file(run / "adapter" / "adapter_model.safetensors")
    assert manifest["dataset"]["sha256"] == basemodel.sha256_file(dataset)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 4
    records = runs.read_metrics(run)
    assert all("step" in r and "loss" in r for r in records) and records[-1]["step"] == 3
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))  # no pickle anywhere


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, tiny_gguf: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat(1), {"messages": [{"role": "user", "content": "hi"}]}])
    assert main(["tune", str(bad), "--model", str(tiny_gguf), "--steps", "1", "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nomoat: error:") and "line 2" in err and "Traceback" not in err
    assert main(["tune", str(tmp_path / "missing.jsonl"), "--steps", "1"]) == 1
    assert main(["tune", str(bad), "--time", "banana"]) == 1
    assert main(["tune", str(bad), "--lora-layers", "0"]) == 1
    assert main(["tune"]) == 1
    assert "name the dataset" in capsys.readouterr().err


def test_a_dequantized_gguf_is_a_plain_model(tiny_gguf: Path, tmp_path: Path) -> None:
    base = basemodel.load(tiny_gguf)
    model = base.load_weights(torch.float32)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(str(tmp_path / "hf"))  # what export will write: no GGUF quantization config
    assert "quantization_config" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    assert base.context_length == 512 and base.chat_template and "<|im_start|>" in base.chat_template


def test_step_cost_has_a_fixed_and_a_per_token_part() -> None:
    samples = [(0.5 + 0.001 * n, n) for n in (100, 400, 250, 800, 120, 640, 300, 90, 700)]
    cost = training.fit_step_cost(samples)
    assert cost(1000) == pytest.approx(1.5) and cost(0) == pytest.approx(0.5)
    few = training.fit_step_cost(samples[:3])  # too few to fit: proportional
    per_token = sum(s for s, _ in samples[:3]) / sum(n for _, n in samples[:3])
    assert few(750) == pytest.approx(per_token * 750)


def test_an_empty_eval_split_only_skips_eval_loss(dataset: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    dataset.with_name("boxes.eval.jsonl").write_text("")
    summary = quick(dataset, tiny_gguf, tmp_path / "noeval", steps=2)
    assert summary["status"] == "complete" and summary["eval_loss_start"] is None
    assert summary["samples"]  # answers still compared, on training prompts
