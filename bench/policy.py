"""What the answer policy costs an allowed question: time to first token with and without the sentence guard.

One generation per question, measured twice at once: the raw stream's first piece (no policy) and the first
text the :class:`nomoat.policy.enforce.Guard` releases (a whole, screened sentence), on the same pieces, so
machine noise cannot favour either side. Also: the CPU time spent in the policy (input check + guard), and
whether the guarded answer equals the raw one (allowed questions must be unaffected).

    python bench/policy.py [--policy src/nomoat/policy/sample.toml] [--model default] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from nomoat.config import GenerationConfig, RuntimeConfig
from nomoat.llm import runtime
from nomoat.policy import rules

QUESTIONS = [
    "What is the capital of France?",
    "How do I make a cup of tea?",
    "Explain what a git commit is.",
    "Give me three tips for better sleep.",
    "What does HTTP stand for?",
    "Write a haiku about autumn.",
    "Why is the sky blue?",
    "How many days are in a leap year?",
    "What is a good name for a cat?",
    "Describe a bicycle in two sentences.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=str(Path(rules.__file__).with_name("sample.toml")))
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    policy = rules.load(args.policy)
    config = RuntimeConfig(n_threads=args.threads) if args.threads else RuntimeConfig()
    model = runtime.load(args.model, config)
    gen = GenerationConfig(max_tokens=args.max_tokens, temperature=0.0, seed=0)
    model.chat([{"role": "user", "content": "hi"}], gen).text()  # warm-up
    rows = []
    for question in QUESTIONS:
        start = time.perf_counter()
        spent = 0.0
        t0 = time.perf_counter()
        refused = policy.check_input(question)
        spent += time.perf_counter() - t0
        first_guarded: list[float] = []

        def released(_text: str, first: list[float] = first_guarded) -> None:
            if not first:
                first.append(time.perf_counter())

        guard = policy.stream(released)
        first_raw, pieces = None, []
        for piece in model.chat([{"role": "user", "content": question}], gen):
            first_raw = first_raw or time.perf_counter()
            pieces.append(piece)
            t0 = time.perf_counter()
            guard.feed(piece)  # the bench keeps generating: the raw side needs the whole answer
            spent += time.perf_counter() - t0
        end = time.perf_counter()
        t0 = time.perf_counter()
        shown = guard.close()
        spent += time.perf_counter() - t0
        first_guarded.append(time.perf_counter())  # a one-sentence answer is released at the end
        raw = "".join(pieces).strip()
        rows.append({"q": question, "raw_ttft": (first_raw or end) - start, "guard_ttft": first_guarded[0] - start,
                     "total": end - start, "policy_ms": spent * 1000, "same": shown == raw and not refused,
                     "events": guard.events, "chars": len(raw)})  # fmt: skip
    for r in rows:
        print(f"{r['raw_ttft']:6.2f} s {r['guard_ttft']:6.2f} s {r['total']:6.2f} s {r['policy_ms']:6.2f} ms "
              f"{'same' if r['same'] else 'DIFFERENT ' + str(r['events'])}  {r['q']}")  # fmt: skip
    med = {k: statistics.median(r[k] for r in rows) for k in ("raw_ttft", "guard_ttft", "total", "policy_ms")}
    same = sum(r["same"] for r in rows)
    print(f"median: TTFT raw {med['raw_ttft']:.2f} s, guarded {med['guard_ttft']:.2f} s "
          f"(+{med['guard_ttft'] - med['raw_ttft']:.2f} s), answer {med['total']:.2f} s, policy CPU "
          f"{med['policy_ms']:.2f} ms per answer; unchanged answers {same}/{len(rows)}")  # fmt: skip


if __name__ == "__main__":
    main()
