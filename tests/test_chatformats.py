"""Chat formats: each family's Go template renders the probe conversation as a real template of that family does,
a template of another shape is not matched, and the Go-subset renderer does what Go's text/template does."""

from __future__ import annotations

import pytest

import tiny_models
from nomoat.llm import chatformats

TEMPLATES = {"chatml": tiny_models.CHATML, "llama3": tiny_models.LLAMA3, "gemma": tiny_models.GEMMA,
             "phi3": tiny_models.PHI3, "mistral": tiny_models.MISTRAL}  # fmt: skip


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_family_renders_the_same_both_ways(name: str) -> None:
    fmt = chatformats.detect(TEMPLATES[name])
    assert fmt is not None and fmt.name == name
    same, jinja, go = chatformats.matches(fmt, TEMPLATES[name], "<s>", "</s>")
    assert same, (jinja, go)
    assert fmt.end_of_turn in go and go.count("Box 1 is red.") == 1


def test_a_template_of_another_shape_does_not_match() -> None:
    # ChatML markers, but every turn closed by a blank line too: Ollama's ChatML template would differ
    odd = tiny_models.CHATML.replace("'<|im_end|>\n'", "'<|im_end|>\n\n'")
    fmt = chatformats.detect(odd)
    assert fmt is not None and fmt.name == "chatml"
    assert not chatformats.matches(fmt, odd, "", "")[0]
    assert chatformats.detect("{{ messages[0]['content'] }}") is None


def test_go_subset_renderer() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    template = (
        '{{- range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}{{ else }}A:{{ .Content }}{{ end }}\n{{ end }}'
    )
    assert chatformats.render_go(template, messages) == "U:a\nA:b\n"
    assert chatformats.render_go("x  {{- .Messages }}", []) == "x[]"
