"""The one check of user-given generation and runtime settings: the CLI flags and the server's fields both use it."""

from __future__ import annotations

from dataclasses import replace

from nomoat.config import GenerationConfig, RuntimeConfig
from nomoat.errors import UserError

MIN_CTX = 256
"""The smallest context window (``--ctx``) that holds a prompt and an answer."""
MAX_TEMPERATURE = 2.0
"""OpenAI's range for ``temperature``; the CLI and the server accept the same one."""
MAX_SEED = 2**32 - 1


class SettingError(UserError):
    """A generation or runtime setting out of range. ``param`` names it ("max_tokens"); the CLI shows it as a flag
    (``--max-tokens``), the server as the request field."""

    def __init__(self, param: str, rule: str) -> None:
        super().__init__(f"{param} {rule}")
        self.param, self.rule = param, rule


def generation_settings(base: GenerationConfig, **given: object) -> GenerationConfig:
    """``base`` with the settings a user gave (``None`` = keep ``base``'s), each checked. Raises SettingError.

    The one validation of sampling settings: the CLI flags and the server's request fields both go through here.
    """
    values = {k: v for k, v in given.items() if v is not None}
    unknown = set(values) - {"max_tokens", "temperature", "top_p", "seed", "stop"}
    if unknown:
        raise SettingError(sorted(unknown)[0], "is not a generation setting")
    gen = replace(base, **values)
    if gen.max_tokens < 1:
        raise SettingError("max_tokens", "must be at least 1")
    if not 0 <= gen.temperature <= MAX_TEMPERATURE:
        raise SettingError("temperature", f"must be between 0 and {MAX_TEMPERATURE:g}")
    if not 0 < gen.top_p <= 1:
        raise SettingError("top_p", "must be greater than 0 and at most 1")
    if gen.seed is not None and not 0 <= gen.seed <= MAX_SEED:
        raise SettingError("seed", "must be between 0 and 2**32 - 1")
    gen.stop = tuple(gen.stop)
    return gen


def runtime_settings(ctx: int | None = None, threads: int | None = None) -> RuntimeConfig:
    """A RuntimeConfig with ``--ctx``/``--threads`` applied (None keeps the default). Raises SettingError."""
    config = RuntimeConfig()
    if ctx is not None:
        if ctx < MIN_CTX:
            raise SettingError("ctx", f"must be at least {MIN_CTX} tokens")
        config.n_ctx = ctx
    if threads is not None:
        if threads < 1:
            raise SettingError("threads", "must be at least 1")
        config.n_threads = threads
    return config
