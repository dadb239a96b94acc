"""Turning a member spec (preset, directory, Hub id or GGUF file) into a model and tokenizer."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError, NotSupportedYetError

if TYPE_CHECKING:
    import torch

COMPLETE_MARKER = "specfuse-complete"


def is_remote_spec(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else path-shaped is meant as a local path."""
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1


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


def _local_gguf_target(gguf: Path) -> Path:
    from .presets import cache_dir

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def resolve_source(source: str, gguf_file: str | None = None) -> str:
    """A directory or Hub id that ``from_pretrained`` can load, converting GGUF files on the way."""
    from .presets import PRESETS, resolve_preset

    if is_remote_spec(source):
        raise NotSupportedYetError(f"remote members ({source}) are not supported yet by this version of specfuse")
    if source in PRESETS:
        return str(resolve_preset(source))
    path = Path(source).expanduser()
    if gguf_file is not None:
        path = path / gguf_file
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return str(converted_gguf_dir(path, _local_gguf_target(path)))
    if path.is_dir():
        return str(path)
    if _looks_like_path(source) or path.exists():
        raise ModelLoadError(f"model path not found: {source}")
    return source  # a Hugging Face Hub id


def load_model_and_tokenizer(
    source: str,
    *,
    gguf_file: str | None,
    dtype: torch.dtype,
    device: str | None,
    device_map: str | dict[str, Any] | None,
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = resolve_source(source, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, device_map=device_map)
    except Exception as error:  # noqa: BLE001
        hint = " (Hub ids need network access; pass a local directory or a preset offline)" if location == source else ""
        raise ModelLoadError(f"could not load model {source!r}{hint}: {error}") from error
    if device is not None:
        model.to(device)
    return model, tokenizer
