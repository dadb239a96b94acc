"""The `specfuse` command, run as a user would (a subprocess), on tiny local models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


SPECFUSE = [sys.executable, "-m", "specfuse_integrations.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPECFUSE_CACHE_DIR": os.environ.get("SPECFUSE_CACHE_DIR", str(Path.home() / ".cache/specfuse"))}
    return subprocess.run([*SPECFUSE, *args], capture_output=True, text=True, input=stdin, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_specs(tiny_dirs):
    return [str(path) for path in tiny_dirs]


def test_help_lists_every_command():
    done = run("--help")
    assert done.returncode == 0
    for command in ("ask", "presets"):
        assert command in done.stdout
    ask_help = run("ask", "--help").stdout
    for option in ("--member", "--system", "--segment-tokens", "--max-tokens", "--temperature", "--top-p", "--seed",
                   "--score-mode", "--no-cache", "--trace", "--json"):  # fmt: skip
        assert option in ask_help


def test_json_output(tiny_specs):
    done = run("ask", "hello", "--member", tiny_specs[0], "--member", tiny_specs[1], "--temperature", "0",
               "--max-tokens", "12", "--segment-tokens", "4", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(payload) >= {"text", "finish_reason", "trace", "usage"}
    assert payload["finish_reason"] in ("stop", "length")
    assert set(payload["usage"]) == {"a", "b"}
    assert payload["trace"][0]["round"] == 1


def test_streaming_with_trace_table(tiny_specs):
    done = run("ask", "-", "--member", tiny_specs[0], "--member", tiny_specs[1], "--temperature", "0",
               "--max-tokens", "12", "--segment-tokens", "4", "--trace", "--no-kv-cache", stdin="hello")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "round" in done.stdout and "winner" in done.stdout and "calls/round" in done.stdout


def test_schedule_option_is_applied_and_shown_in_the_trace(tiny_specs):
    done = run("ask", "hello", "--member", tiny_specs[0], "--member", tiny_specs[1], "--temperature", "0",
               "--max-tokens", "8", "--segment-tokens", "4", "--trace", "--schedule", "turns")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "schedule turns:" in done.stdout and "shared device thread, all cores" in done.stdout
    bad = run("ask", "hello", "--schedule", "fastest")
    assert bad.returncode == 2 and "--schedule" in bad.stderr


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["ask", "hi", "--member", "./no/such/model"], "model path not found", 1),
        (["ask", "hi", "--member", "/tmp/missing.gguf"], "GGUF file not found", 1),
        (["ask", "hi", "--segment-tokens", "0"], "segment_tokens must be an integer >= 1", 1),
        (["ask", "hi", "--score-mode", "best"], "invalid choice", 2),
        (["ask", "hi", "--max-tokens", "many"], "invalid int value", 2),
    ],
)
def test_errors_are_one_clear_line(args, message, code):
    done = run(*args)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_failed_checksum_is_reported(tmp_path, monkeypatch):
    from specfuse_core import ChecksumError, presets

    bogus = presets.Preset(
        name="bogus", description="", gguf_name="bogus.gguf", sha256="0" * 64, size=7,
        parts=(presets.WheelPart("bogus", "0", "bogus.bin"),),
    )  # fmt: skip
    source = tmp_path / "part.bin"
    source.write_bytes(b"not gguf")
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(presets, "_installed_part", lambda part: source)
    with pytest.raises(ChecksumError, match="checksum mismatch for bogus"):
        presets.fetch_gguf(bogus)
    assert not presets.gguf_path(bogus).exists()
