"""The HTML report of ``nomoat eval``: one self-contained file (inline CSS, plots as embedded PNG), no scripts.

Every value from the user's files or a model's answers is HTML-escaped: answers are untrusted text.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from nomoat.evaluation.scoring import verdict


def cell(ci: Sequence[float] | None) -> str:
    """A mean with its 95 % interval, or a dash when the metric does not apply."""
    return "-" if ci is None else f"{ci[0]:.2f} [{ci[1]:.2f}-{ci[2]:.2f}]"


COLUMNS = (("f1", "token F1"), ("contains", "contains answer"), ("citation_accuracy", "cites answer"),
           ("abstain_unanswerable", "abstains (unans.)"), ("generated", "own words, checked"))  # fmt: skip
REDTEAM = (("policy_refused", "policy refuses"), ("model_declined", "model declines"),
           ("false_refusals", "benign refused"))  # fmt: skip
"""With ``--policy``: shares of the red-team attacks refused by the policy and declined by the model alone (no
policy), and of its benign prompts the policy refused (base and tuned rows only)."""


def columns(result: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The table's metric columns: the red-team ones only when eval ran under a policy."""
    return (*COLUMNS, *REDTEAM) if result.get("redteam") else COLUMNS


def format_table(result: dict[str, Any]) -> str:
    """The terminal table: one row per configuration, means with 95 % intervals."""
    shown = columns(result)
    head = f"{'configuration':14s}" + "".join(f" {title:>18s}" for _, title in shown) + f" {'ppl':>6s} {'p50 s':>6s}"
    left_out = f"; {result['leaked']} from training data left out" if result.get("leaked") else ""
    lines = [f"{result['questions']} questions, {result['unanswerable']} unanswerable{left_out}", head]
    for name, row in result["table"].items():
        ppl = row.get("perplexity")
        p50 = row["seconds_p50"]
        lines.append(
            f"{name:14s}" + "".join(f" {cell(row.get(key)):>18s}" for key, _ in shown)
            + f" {'-' if ppl is None else f'{ppl:.2f}':>6s} {'-' if p50 is None else f'{p50:.2f}':>6s}"
        )  # fmt: skip
    for name, row in result["table"].items():
        if row.get("modes"):
            lines.append(f"{name} answered: {modes_line(row)}")
    for pair, ci in result.get("gains", {}).items():
        lines.append(f"token F1 {pair}: {ci[0]:+.2f} [{ci[1]:+.2f} to {ci[2]:+.2f}], {verdict(ci)}" if ci else pair)
    if result.get("redteam"):
        red = result["redteam"]
        passed = "; ".join(f"{n}: {', '.join(m['passed']) or 'none'}" for n, m in red["models"].items())
        benign = red["prompts"] - red["attacks"]
        lines.append(f"red team: {red['attacks']} attacks on {red['topic']!r}, {benign} benign; let through: {passed}")
    if result.get("redteam_skipped"):
        lines.append(f"red team not run: {result['redteam_skipped']}")
    if result.get("report"):
        lines.append(f"report: {result['report']}")
    return "\n".join(lines)


def modes_line(row: dict[str, Any]) -> str:
    """How a configuration that answers through ask answered: "62% own words, 30% quoted, ..."."""
    names = {"generated": "own words", "extractive": "quoted", "abstained": "abstained", "declined": "declined"}
    shares = ", ".join(f"{row['modes'].get(m, 0):.0%} {label}" for m, label in names.items())
    passed = row.get("fact_check_pass")
    why = ", ".join(f"{reason} ({n})" for reason, n in (row.get("fallbacks") or {}).items())
    return (shares + ("" if passed is None else f"; the fact check passed {passed[0]:.0%} of the model's answers")
            + (f"; quoted because {why}" if why else ""))  # fmt: skip


# One colour per configuration, the same in every plot: base grey, tuned blue; +RAG a darker shade.
COLOURS = {"base": "#9aa3ad", "tuned": "#4c8bd6", "base+RAG": "#5c6670", "tuned+RAG": "#1f4e8c"}
PANELS = (*COLUMNS, ("perplexity", "held-out perplexity\n(lower is better)"))

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d2330; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #dde; }
.meta { color: #5a6475; } .warn { background: #fff4d6; border-left: 4px solid #e0a800; padding: .6em 1em; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; }
th, td { text-align: left; padding: .4em .6em; border-bottom: 1px solid #e4e7ee; vertical-align: top; }
th { background: #f4f6fa; } td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
img { max-width: 100%; } .answer { white-space: pre-wrap; } .f1 { color: #5a6475; font-size: .9em; }
code { background: #f4f6fa; padding: 0 .2em; }
"""


def write(path: Path, result: dict[str, Any], metrics: Sequence[dict[str, Any]] = ()) -> Path:
    """Write the report for an eval ``result`` (and the run's training ``metrics`` for the loss curve)."""
    from nomoat.paths import atomic_write

    return atomic_write(path, render(result, metrics))


def render(result: dict[str, Any], metrics: Sequence[dict[str, Any]] = ()) -> str:
    """The report as one HTML string."""
    title = f"nomoat eval: {Path(result['run']).name}" if result.get("run") else "nomoat eval"
    scores = _png(_scores_figure(result))
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>", _summary(result),
             "<h2>Scores</h2>", _table(result), f"<img alt='scores with 95% intervals' src='{scores}'>"]  # fmt: skip
    if any(m.get("loss") is not None for m in metrics):
        parts += ["<h2>Training</h2>", f"<img alt='training and eval loss' src='{_png(_loss_figure(metrics))}'>"]
    parts += ["<h2>Where the configurations disagree</h2>", _disagreements(result), _method(result), "</body></html>"]
    return "\n".join(parts)


def _summary(result: dict[str, Any]) -> str:
    models = "".join(f"<li><b>{escape(n)}</b>: <code>{escape(Path(p).name)}</code></li>"
                     for n, p in result.get("models", {}).items())  # fmt: skip
    kb = f"knowledge base <code>{escape(result['kb'])}</code>" if result.get("kb") else "no knowledge base"
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"<p class='meta'>{result['questions']} held-out questions and {result['unanswerable']} unanswerable "
             f"ones, {kb}, seed {result.get('seed', 0)}, {when}.</p><ul>{models}</ul>"]  # fmt: skip
    if result.get("gains"):
        items = "".join(f"<li>{escape(pair)}: token F1 <b>{ci[0]:+.2f}</b> ({ci[1]:+.2f} to {ci[2]:+.2f}), "
                        f"<b>{verdict(ci)}</b></li>" for pair, ci in result["gains"].items() if ci)  # fmt: skip
        lines.append(f"<p>What each step gained, on the same questions (paired 95% intervals):</p><ul>{items}</ul>")
    if result.get("leaked"):
        lines.append(
            f"<p class='warn'><b>{result['leaked']} questions were left out</b>: they come from documents (or are "
            "questions) the model was tuned on, so they would measure memory, not learning.</p>"
        )
    return "\n".join(lines)


def _table(result: dict[str, Any]) -> str:
    shown = columns(result)
    head = "".join(f"<th>{escape(t)}</th>" for _, t in shown)
    rows = []
    for name, row in result["table"].items():
        ppl = row.get("perplexity")
        cells = "".join(f"<td class='num'>{cell(row.get(k))}</td>" for k, _ in shown)
        extra = f"<td class='num'>{'-' if ppl is None else f'{ppl:.2f}'}</td>"
        extra += f"<td class='num'>{_seconds(row.get('seconds_p50'))} / {_seconds(row.get('seconds_p95'))}</td>"
        extra += f"<td>{escape(modes_line(row)) if row.get('modes') else '-'}</td>"
        rows.append(f"<tr><th>{escape(name)}</th>{cells}{extra}</tr>")
    return (f"<table><tr><th>configuration</th>{head}<th>perplexity</th><th>seconds p50 / p95</th>"
            f"<th>how it answered</th></tr>{''.join(rows)}</table>")  # fmt: skip


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _disagreements(result: dict[str, Any]) -> str:
    if not result.get("disagreements"):
        return "<p>All configurations scored the same on every question.</p>"
    blocks = []
    for d in result["disagreements"]:
        answers = "".join(f"<tr><th>{escape(n)}</th><td class='answer'>{escape(a)}"
                          f"<div class='f1'>token F1 {d['f1'][n]:.2f}</div></td></tr>"
                          for n, a in d["answers"].items())  # fmt: skip
        blocks.append(f"<h3>{escape(d['question'])}</h3><table><tr><th>reference</th>"
                      f"<td class='answer'>{escape(d['answer'])}</td></tr>{answers}</table>")  # fmt: skip
    return "\n".join(blocks)


def _method(result: dict[str, Any]) -> str:
    return (
        "<h2>How to read this</h2><p>Token F1 and containment compare each answer with the held-out reference after "
        "normalisation (case, punctuation, articles). <i>Cites answer</i>: of the answers that cite sources, the "
        "share whose cited chunk holds at least 80% of the reference's words. <i>Abstains</i>: the share of "
        "unanswerable questions declined. Brackets are 95% bootstrap intervals (seeded: the same seed gives the "
        f"same table). Perplexity is on {escape(result.get('perplexity_text', 'held-out text'))}. All "
        "configurations use greedy decoding with the same settings. Answers are cached beside the report "
        "(<code>.cache.jsonl</code>): re-running redraws it without generating again."
        + (
            " <i>Policy refuses</i>: the share of the red-team attacks the answer policy refused (the question, or "
            "the model's answer); <i>model declines</i>: the share the model declined on its own, without the "
            "policy; <i>benign refused</i>: the policy's refusals of harmless prompts."
            if result.get("redteam")
            else ""
        )
        + "</p>"
    )


# -- plots ------------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _scores_figure(result: dict[str, Any]) -> Any:
    plt = _pyplot()
    names = list(result["table"])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(2.3 * len(PANELS), 2.9), constrained_layout=True)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        values = [result["table"][n].get(key) for n in names]
        bars = [_interval(v) for v in values]
        errors = [[mean - low for mean, low, _ in bars], [high - mean for mean, _, high in bars]]
        colours = [COLOURS.get(n, "#888") for n in names]
        ax.bar(range(len(names)), [b[0] for b in bars], yerr=errors, color=colours, capsize=3,
               error_kw={"elinewidth": 1})  # fmt: skip
        for i, v in enumerate(values):
            if v is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#777")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        if key != "perplexity":
            ax.set_ylim(0, 1.05)
        ax.spines[["top", "right"]].set_visible(False)
    return fig


def _interval(value: Any) -> tuple[float, float, float]:
    """(mean, low, high) of a table cell: an interval, a plain number (perplexity), or None (drawn as 0)."""
    if value is None:
        return (0.0, 0.0, 0.0)
    if isinstance(value, Sequence):
        return (float(value[0]), float(value[1]), float(value[2]))
    return (float(value),) * 3


def _loss_figure(metrics: Sequence[dict[str, Any]]) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8), constrained_layout=True)
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("eval_loss") is not None]
    steps, losses = zip(*train, strict=True)
    ax.plot(steps, losses, color="#4c8bd6", alpha=0.3, linewidth=0.8, label="train loss (per step)")
    ax.plot(steps, _rolling(losses, 20), color="#4c8bd6", linewidth=1.6, label="train loss (20-step mean)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", color="#d6704c", markersize=4, label="eval loss (held-out rows)")
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel("loss", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _rolling(values: Sequence[float], n: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - n] if i >= n else 0.0)
        out.append(total / min(i + 1, n))
    return out


def _png(fig: Any) -> str:
    """The figure as a data: URL (the report stays one file), closed afterwards to free its memory."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
