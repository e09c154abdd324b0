"""llama.cpp's own ``convert_hf_to_gguf.py``, from the llama.cpp version the runtime is built from.

A GGUF export from a Hugging Face folder goes through the converter llama.cpp maintains, never one of ours:
it knows each architecture's tensor layout, tokenizer and metadata. llama-cpp-python's source release vendors
llama.cpp, so :func:`install` (run by ``make install``, or ``python -m nomoat.exporting.converter``) fetches that
release with pip and keeps the converter, its ``conversion`` package and the matching ``gguf-py`` (the PyPI
``gguf`` is a different snapshot) under the cache, keyed by the installed llama-cpp-python version. It also keeps
llama.cpp's tokenizer test vocabularies (``models/ggml-vocab-*.gguf``), which nomoat's tests build tiny models on.

The converter runs in a subprocess (its ``gguf`` must not replace ours); several folders convert in one process,
so torch and transformers are imported once.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nomoat.errors import ModelError, UserError

DIST = "llama-cpp-python"
KEPT = (
    "convert_hf_to_gguf.py",
    "convert_lora_to_gguf.py",
    "conversion/",
    "gguf-py/",
    "LICENSE",
    "models/ggml-vocab-qwen2.gguf",
)
ENV = "NOMOAT_LLAMA_CONVERTER"  # a folder holding convert_hf_to_gguf.py, instead of the cache

# Runs in the subprocess: llama.cpp's script, once per (folder, outfile), in one interpreter.
_DRIVER = """
import os, runpy, sys
script, outtype, *jobs = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))  # as `python convert_hf_to_gguf.py` would: its conversion package
for src, dst in zip(jobs[::2], jobs[1::2]):
    sys.argv = [script, src, "--outfile", dst, "--outtype", outtype]
    runpy.run_path(script, run_name="__main__")
"""


def version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"{DIST} is not installed; run `make install`") from None


def folder() -> Path:
    """Where the converter of the installed llama-cpp-python version lives (or is to be installed)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    from platformdirs import user_cache_dir

    return Path(os.environ.get("NOMOAT_CACHE") or user_cache_dir("nomoat")) / "llama.cpp" / version()


def locate() -> Path:
    """``convert_hf_to_gguf.py`` of the runtime's llama.cpp; UserError saying how to get it when missing."""
    script = folder() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise UserError(
            f"GGUF export from a Hugging Face folder needs llama.cpp's converter ({DIST} {version()}): "
            f"run `python -m nomoat.exporting.converter` once (make install does)"
        )
    return script


def vocabulary(name: str) -> Path | None:
    """One of llama.cpp's tokenizer test vocabularies kept with the converter (``qwen2`` -> ggml-vocab-qwen2.gguf)."""
    path = folder() / "models" / f"ggml-vocab-{name}.gguf"
    return path if path.is_file() else None


def install(quiet: bool = False) -> Path:
    """Fetch llama-cpp-python's source release (the installed version) with pip and keep the converter files."""
    import tarfile

    dest = folder()
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"{DIST}=={version()}", "--no-deps", "--no-binary", ":all:",
               "-d", tmp]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=quiet)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                _, _, rest = m.name.partition("/vendor/llama.cpp/")
                if rest and any(rest.startswith(k) for k in KEPT) and (m.isfile() or m.isdir()):
                    m.name = rest
                    members.append(m)
            tar.extractall(partial, members=members, filter="data")
        partial.replace(dest)  # a killed install never leaves half a converter behind
    return dest


def convert(jobs: list[tuple[Path, Path]], outtype: str = "f16") -> None:
    """Convert each HF folder to a GGUF with llama.cpp's converter; ModelError with its last line on failure."""
    script = locate()
    args = [str(p) for job in jobs for p in job]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("NO_LOCAL_GGUF", None)  # the script puts its own gguf-py first on sys.path
    done = subprocess.run([sys.executable, "-c", _DRIVER, str(script), outtype, *args], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(" ")]
        raise ModelError(f"llama.cpp's converter failed: {lines[-1] if lines else f'exit {done.returncode}'}")


if __name__ == "__main__":
    print(install())
