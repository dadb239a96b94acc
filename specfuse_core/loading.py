"""Turning a local member spec (preset, directory, Hub id or GGUF file) into a model and tokenizer.

Remote specs (``http(s)://host:port/v1#model``) are recognised here (:func:`is_remote_spec`) but
built elsewhere: :func:`specfuse_core.registry.load_member` makes an
:class:`~specfuse_core.remote.OpenAICompatibleMember` for them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError, NotSupportedYetError
from .presets import PRESETS, cache_dir, converted_gguf_dir, resolve_preset

if TYPE_CHECKING:
    import torch


def is_remote_spec(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else path-shaped is meant as a local path."""
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1


def _local_gguf_target(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def resolve_source(source: str, gguf_file: str | None = None) -> str:
    """A directory or Hub id that ``from_pretrained`` can load, converting GGUF files on the way."""
    if is_remote_spec(source):
        raise NotSupportedYetError(
            f"{source} is a remote endpoint, not a local model: build it with load_member() or "
            "Ensemble.from_specs(), which make an OpenAICompatibleMember (the 'remote' extra)"
        )
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
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = resolve_source(source, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, device_map=device_map, attn_implementation=attn_implementation
        )
    except Exception as error:  # noqa: BLE001
        hint = " (Hub ids need network access; pass a local directory or a preset offline)" if location == source else ""
        raise ModelLoadError(f"could not load model {source!r}{hint}: {error}") from error
    if device is not None:
        model.to(device)
    return model, tokenizer
