"""`HFMember`: a local Hugging Face transformers model as an ensemble member.

Per request an :class:`HFSession` keeps the canonical ids ``template(messages) + tokenize(R)`` and a
KV cache that lives across rounds (docs/algorithm.md §2, §7):

- new accepted text rolls the cache back to the longest common prefix and feeds only the rest;
- all candidates are scored in one batched pass over a copy of the cached prefix, and the batch
  cache is kept so that, whichever candidate wins, its keys and values need not be computed again;
- a drafter's score of its own draft reuses the log-probabilities it recorded while drafting.

With ``cache=False`` every draft and every scoring pass re-reads the whole context instead, the way
the reference code does (the baseline of ``benchmarks/rounds.py``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .scheduler import prefer_passive_openmp

if "torch" not in sys.modules:
    prefer_passive_openmp()  # before torch loads OpenMP (an OMP_WAIT_POLICY already set wins)

import torch  # noqa: E402

from . import _threads, kv_cache
from .errors import ConfigError, ModelLoadError
from .forward import ModelForward, forward_for
from .member import ContextWindowFull, Draft, Role, SamplingParams, TokenScores, role_flags
from .messages import Message
from .numerics import (
    bound_kernel_caches,
    default_device,
    make_rows_independent,
    needs_exact_rows,
    packs_linear_layers,
    parse_dtype,
    pass_threads,
)
from .prompting import NO_NATIVE_SUPPORT, ToolSupport, member_prompt, needs_tool_rendering, probe_tool_support
from .scheduler import Worker, default_worker, openmp_spins
from .segments import common_prefix_length
from .tools import NO_TOOLS, ToolRequest
from .trace import MemberUsage

T = TypeVar("T")

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""The prompt template of a member whose tokenizer has no chat template (override with ``chat_template=``)."""


class HFMember:
    """A local transformers causal LM.

    ``model`` is a local directory, a Hugging Face Hub id, a ``.gguf`` file, a preset name (see
    :data:`specfuse_core.presets.PRESETS`) or an already loaded ``PreTrainedModel`` (then pass
    ``tokenizer``). ``role`` is ``"both"`` (default), ``"draft"`` or ``"score"``.
    ``forward`` is the forward pass its requests run: on CPU, Llama, Qwen2 and Qwen3 models get a lean one
    that computes exactly what transformers' does (:func:`specfuse_core.forward.forward_for`).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        tokenizer: Any = None,
        name: str | None = None,
        role: Role = "both",
        gguf_file: str | None = None,
        device: str | None = None,
        device_map: str | dict[str, Any] | None = None,
        dtype: str | torch.dtype | None = None,
        chat_template: str | None = None,
        context_window: int | None = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        self.role: Role = role
        self._threads = threads
        self._parameters: int | None = None  # counted before prepacking: a packed weight is a buffer
        self._can_draft, self._can_score = role_flags(role)
        if device is not None and device_map is not None:
            raise ConfigError("pass either device or device_map, not both")
        wanted_device = device or (default_device() if device_map is None else "cpu")
        if isinstance(model, (str, os.PathLike)):
            from .loading import load_model_and_tokenizer

            self.source = str(model)
            self.name = name or _name_from_source(self.source, gguf_file)
            chosen_dtype = parse_dtype(dtype, wanted_device)
            exact_rows = device_map is None and needs_exact_rows(chosen_dtype, wanted_device)
            self.model, self.tokenizer = load_model_and_tokenizer(
                self.source,
                gguf_file=gguf_file,
                dtype=chosen_dtype,
                device=None if device_map is not None else wanted_device,
                device_map=device_map,
                attn_implementation="eager" if exact_rows else None,
            )
            if device_map is None and packs_linear_layers(chosen_dtype, wanted_device):
                self._parameters = sum(p.numel() for p in self.model.parameters())
                bound_kernel_caches()
                make_rows_independent(self.model)
        else:
            if tokenizer is None:
                raise ConfigError("a model object needs its tokenizer: HFMember(model, tokenizer=...)")
            self.source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            self.name = name or _name_from_source(self.source, None)
            self.model, self.tokenizer = model, tokenizer
        self.model.eval()
        self.device = next(self.model.parameters()).device
        # The lean pass is measured on CPU only; GPUs and device maps keep transformers' forward.
        on_cpu = device_map is None and self.device.type == "cpu"
        self.forward: ModelForward = forward_for(self.model) if on_cpu else ModelForward(self.model)
        self._device_key = str(self.device) if device_map is None else f"map:{id(self.model)}"
        self.worker: Worker = default_worker(self._device_key)
        self.runner = _ForwardRunner(self)
        if chat_template is not None:
            self.tokenizer.chat_template = chat_template
        self.uses_plain_template = not getattr(self.tokenizer, "chat_template", None)
        self.chat_template = self.tokenizer.chat_template or PLAIN_TEMPLATE
        self._context_window = context_window or _model_context_window(self.model)
        self.end_of_turn_id = _find_end_of_turn(self.tokenizer, self.chat_template, self.uses_plain_template)
        self.stop_token_ids = _stop_token_ids(self.model, self.tokenizer, self.end_of_turn_id)

    @property
    def can_draft(self) -> bool:
        return self._can_draft

    @property
    def can_score(self) -> bool:
        return self._can_score

    @property
    def context_window(self) -> int | None:
        return self._context_window

    # -- scheduling (scheduler.Schedulable) -------------------------------------------------------

    @property
    def device_key(self) -> str:
        """The device this member's work runs on (``"cpu"``, ``"cuda:0"``; ``"map:..."`` when sharded)."""
        return self._device_key

    @functools.cached_property
    def cost(self) -> int:
        """Relative compute per token: the parameter count (prepacked weights included)."""
        return self._parameters or sum(p.numel() for p in self.model.parameters())

    @property
    def threads(self) -> int | None:
        """The thread budget given with ``threads=`` (used by the ``parallel`` schedule), or ``None``."""
        return self._threads

    def use_worker(self, worker: Worker) -> None:
        """Run this member's model work on ``worker`` (the scheduler's choice)."""
        self.worker = worker

    def __repr__(self) -> str:
        return f"HFMember(name={self.name!r}, role={self.role!r}, device={str(self.device)!r})"

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The chat template applied to ``messages`` (and ``tools``), with the assistant generation prompt."""
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False, **extra
        )

    @functools.cached_property
    def tool_support(self) -> ToolSupport:
        """Whether this member's chat template renders tools and tool history (found by rendering probes)."""
        return NO_NATIVE_SUPPORT if self.uses_plain_template else probe_tool_support(self.render)

    def prompt_ids(self, messages: list[Message], tools: ToolRequest = NO_TOOLS) -> list[int]:
        """Token ids of the rendered prompt: the chat template, with the request's tools where needed."""
        support = self.tool_support if needs_tool_rendering(messages, tools) else NO_NATIVE_SUPPORT
        text = member_prompt(messages, tools, support, self.render)
        return list(self.tokenizer.encode(text, add_special_tokens=self.uses_plain_template))

    async def prompt_tokens(self, messages: list[Message], tools: ToolRequest = NO_TOOLS) -> int:
        """The length of the rendered prompt (tools and schema instructions included), without model work."""
        return await asyncio.to_thread(lambda: len(self.prompt_ids(messages, tools)))

    def grammar_vocab(self) -> Any:
        """This member's vocabulary for grammar.py (compiled once, cached by grammar.py)."""
        from .grammar import TokenVocabulary

        vocab_size = int(self.model.config.get_text_config().vocab_size)
        return TokenVocabulary.of(self.tokenizer, vocab_size, self.stop_token_ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run blocking model work on this member's worker thread."""
        return await self.worker.call(fn)

    async def run_job(self, job: Generator[Any, Any, T]) -> T:
        """Run a job of forward passes on this member's worker, batched with concurrent requests' jobs."""
        return await self.worker.submit(job, self.runner)

    async def open_session(
        self, messages: list[Message], *, cache: bool = True, seed: int | None = None, tools: ToolRequest | None = None
    ) -> HFSession:
        request = tools or NO_TOOLS

        def prepare() -> tuple[list[int], Any, bool]:
            constraint = None
            if request.constrained:
                from .grammar import TokenConstraint

                constraint = TokenConstraint(self.grammar_vocab(), request)
            native_tools = bool(request.offered_tools) and self.tool_support.tools
            return self.prompt_ids(messages, request), constraint, native_tools

        # Not on the member's worker: while other requests' jobs keep it busy (a long prompt being read in
        # chunks), a new request would wait for them all to finish before it could even start.
        prompt, constraint, native_tools = await asyncio.to_thread(prepare)
        return HFSession(
            self, prompt, use_cache=cache, seed=seed, constraint=constraint, native_tools=native_tools
        )


@dataclass
class _OwnDraft:
    """What a drafter recorded while drafting: its tokens and their scores, after ``base_ids``."""

    base_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    logits: list[float]


@dataclass
class _ScoredBatch:
    cache: Any
    row_ids: list[list[int]]


class HFSession:
    """One request's state in an :class:`HFMember` (see the module docstring)."""

    def __init__(
        self,
        member: HFMember,
        prompt_ids: list[int],
        *,
        use_cache: bool,
        seed: int | None,
        constraint: Any = None,
        native_tools: bool = False,
    ) -> None:
        self.member = member
        self.constraint = constraint  # grammar.TokenConstraint: drafts follow the request's grammar
        self.use_cache = use_cache
        self.prompt_ids = prompt_ids
        self.native_tools = native_tools  # the prompt shows the offered tools through the member's own template
        self.accepted_text = ""
        self.ids: list[int] = list(prompt_ids)
        self.usage = MemberUsage(prompt_tokens=len(prompt_ids))
        self._cache: Any = None
        self._cached_ids: list[int] = []
        self._scored: _ScoredBatch | None = None
        self._own: _OwnDraft | None = None
        self._lookahead: tuple[list[int], torch.Tensor] | None = None  # (ids, logits of the token after them)
        self._generator = torch.Generator(device="cpu")
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    # -- the MemberSession protocol -------------------------------------------------------------

    @property
    def grammar_seconds(self) -> float:
        """Time this session spent on its grammar (masks, syncing): part of the round's grammar cost."""
        return self.constraint.seconds if self.constraint is not None else 0.0

    async def draft(self, max_new_tokens: int, sampling: SamplingParams) -> Draft:
        return await self.member.run_job(self._draft(max_new_tokens, sampling))

    async def score(self, candidates: Sequence[tuple[str, bool]]) -> list[TokenScores]:
        return await self.member.run_job(self._score(candidates))

    def accept(self, accepted_text: str) -> None:
        self.accepted_text = accepted_text
        if self.constraint is not None:
            self.constraint.sync(accepted_text)
        self.ids = self.prompt_ids + self.member.encode(accepted_text)
        if self._scored is not None and self.use_cache:
            rows = self._scored.row_ids
            best_row = max(range(len(rows)), key=lambda r: common_prefix_length(rows[r], self.ids))
            reach = common_prefix_length(rows[best_row], self.ids)
            if reach > common_prefix_length(self._cached_ids, self.ids):
                self._cache = kv_cache.select_row(self._scored.cache, best_row, reach)
                self._cached_ids = self.ids[:reach]
        self._scored = None
        self._own = None

    def count_tokens(self, text: str) -> int:
        return len(self.member.encode(text))

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        ids = self.member.encode(text)
        return text if len(ids) <= max_tokens else self.member.decode(ids[:max_tokens])

    async def aclose(self) -> None:
        self._cache = None
        self._cached_ids = []
        self._scored = None
        self._own = None
        self._lookahead = None

    # -- model work: jobs that yield forward passes (run on the member's worker thread) -------------

    def _check_room(self, extra_tokens: int) -> None:
        window = self.member.context_window
        if window is not None and len(self.ids) + extra_tokens > window:
            raise ContextWindowFull(f"context window of {window} tokens is full ({len(self.ids)} in use)")

    def _forward(self, input_ids: list[list[int]], cache: Any, logits_to_keep: int) -> _Job[tuple[torch.Tensor, Any]]:
        """One forward pass; the worker may run it in one batch with other requests' passes."""
        return (yield _Pass(input_ids, cache, logits_to_keep))

    def _prefill(self, target: list[int]) -> _Job[torch.Tensor]:
        """Make the cache hold ``target`` and return the logits that predict the token after it."""
        lookahead, self._lookahead = self._lookahead, None
        if self.use_cache and lookahead is not None and lookahead[0] == target and self._cached_ids == target:
            return lookahead[1]  # the last draft's look-ahead step already computed them
        keep = min(common_prefix_length(self._cached_ids, target), len(target) - 1) if self.use_cache else 0
        if keep == 0 or self._cache is None:
            self._cache, keep = kv_cache.new_cache(), 0
        else:
            kv_cache.crop(self._cache, keep)
        for start in range(keep, len(target), PREFILL_CHUNK):
            self._cached_ids = target[:start]  # what the cache holds, should the request stop between chunks
            chunk = target[start : start + PREFILL_CHUNK]
            logits, self._cache = yield from self._forward([chunk], self._cache, logits_to_keep=1)
        self._cached_ids = list(target)
        return logits[0, -1].float()

    def _draft(self, max_new_tokens: int, sampling: SamplingParams) -> _Job[Draft]:
        self._check_room(max_new_tokens)
        member = self.member
        logits = yield from self._prefill(self.ids)
        tokens: list[int] = []
        logprobs: list[float] = []
        raw_logits: list[float] = []
        ended = False
        # Under a grammar only the sampling is masked: the recorded scores stay the model's own, so
        # that reusing them as this member's score of its draft matches what scoring would compute.
        grammar = self.constraint.start_draft() if self.constraint is not None else None
        for step in range(max_new_tokens):
            token = _sample(grammar.masked(logits) if grammar else logits, sampling, self._generator)
            if grammar is not None:
                grammar.advance(token)
            logprobs.append(float(torch.log_softmax(logits, dim=-1)[token]))
            raw_logits.append(float(logits[token]))
            tokens.append(token)
            if token in member.stop_token_ids:
                ended = True
                break
            if sampling.stop and any(s in member.decode(tokens) for s in sampling.stop):
                break
            if step + 1 < max_new_tokens:
                step_logits, self._cache = yield from self._forward([[token]], self._cache, logits_to_keep=1)
                self._cached_ids.append(token)
                logits = step_logits[0, -1].float()
        text_tokens = _drop_incomplete_characters(member, tokens[:-1] if ended else tokens)
        text = member.decode(text_tokens)
        self.usage.generated_tokens += len(tokens)
        self.usage.calls += 1
        self._own = _OwnDraft(list(self.ids), tokens, logprobs, raw_logits)
        hit_budget = not ended and len(tokens) == max_new_tokens
        next_text = (yield from self._peek_next_text(tokens, text)) if hit_budget else None
        return Draft(text=text, ended=ended, hit_budget=hit_budget, tokens=len(tokens), next_text=next_text)

    def _peek_next_text(self, tokens: list[int], text: str) -> _Job[str | None]:
        """One more decode step after a draft that hit its budget: the text the drafter's own next
        greedy token would add after ``text`` (``""`` for an end-of-turn token; ``None`` when it is
        not known, e.g. a partial character). The step's logits are kept for the next draft's prefill,
        so when this draft wins whole the step costs nothing extra."""
        window = self.member.context_window
        if window is not None and len(self._cached_ids) + 1 > window:
            return None
        step_logits, self._cache = yield from self._forward([[tokens[-1]]], self._cache, logits_to_keep=1)
        self._cached_ids.append(tokens[-1])
        logits = step_logits[0, -1].float()
        self._lookahead = (list(self._cached_ids), logits)
        following = int(torch.argmax(logits))
        if following in self.member.stop_token_ids:
            return ""
        full = self.member.decode(tokens + [following])
        if not full.startswith(text):
            return None
        rest = full[len(text) :]
        return None if not rest or rest.startswith("\ufffd") else rest

    def _candidate_ids(self, text: str, ends: bool) -> list[int]:
        ids = self.prompt_ids + self.member.encode(self.accepted_text + text)
        return ids + [self.member.end_of_turn_id] if ends else ids

    def _reused_own_scores(self, full: list[int], start: int) -> TokenScores | None:
        """Scores are causal, so any candidate whose tokens are a prefix of this member's own draft
        (its whole draft, or the draft trimmed at a word boundary) was already scored while drafting."""
        own = self._own
        if own is None or own.base_ids != self.ids or start != len(self.ids):
            return None
        n = len(full) - start
        if n > len(own.token_ids) or full[start:] != own.token_ids[:n]:
            return None
        return TokenScores(own.logprobs[:n], own.logits[:n])

    def _score(self, candidates: Sequence[tuple[str, bool]]) -> _Job[list[TokenScores]]:
        self._check_room(max((self.count_tokens(t) for t, _ in candidates), default=0) + 1)
        results: list[TokenScores | None] = [None] * len(candidates)
        rows: list[tuple[int, list[int], int]] = []
        for index, (text, ends) in enumerate(candidates):
            full = self._candidate_ids(text, ends)
            start = max(1, min(common_prefix_length(self.ids, full), len(full) - 1))
            reused = self._reused_own_scores(full, start)
            if reused is not None:
                results[index] = reused
            else:
                rows.append((index, full, start))
            self.usage.scored_tokens += len(full) - start
        if rows:
            yield from self._score_rows(rows, results)
        self.usage.calls += 1
        return [r for r in results if r is not None]

    def _score_rows(self, rows: list[tuple[int, list[int], int]], results: list[TokenScores | None]) -> _Job[None]:
        """One batched forward pass over all rows, on top of a shared copy of the cached prefix."""
        first_start = min(start for _, _, start in rows)
        keep = 0
        if self.use_cache and self._cache is not None:
            keep = max(0, min(first_start - 1, common_prefix_length(self._cached_ids, self.ids)))
        prefix = kv_cache.expanded_prefix(self._cache, keep, len(rows)) if keep > 0 else kv_cache.new_cache()
        suffixes = [full[keep:] for _, full, _ in rows]
        width = max(len(s) for s in suffixes)
        pad = self.member.tokenizer.pad_token_id or 0
        # Right padding needs no attention mask: causal attention never looks ahead at the pads.
        batch = [s + [pad] * (width - len(s)) for s in suffixes]
        logits_to_keep = width - (first_start - 1 - keep)
        batch_logits, batch_cache = yield from self._forward(batch, prefix, logits_to_keep=logits_to_keep)
        offset = width - logits_to_keep
        logits = batch_logits.float()
        for b, (index, full, start) in enumerate(rows):
            positions = torch.arange(start - 1 - keep, len(full) - 1 - keep) - offset
            targets = torch.tensor(full[start:], device=logits.device)
            row_logits = logits[b, positions]
            chosen = row_logits.gather(-1, targets[:, None])[:, 0]
            logprobs = chosen - torch.logsumexp(row_logits, dim=-1)
            results[index] = TokenScores(logprobs.tolist(), chosen.tolist())
        if self.use_cache:
            self._scored = _ScoredBatch(batch_cache, [full for _, full, _ in rows])


_Job = Generator["_Pass", Any, T]

PREFILL_CHUNK = 256
"""Tokens per forward pass of a prompt prefill. Each chunk is one step of the member's worker, so the
decode steps of concurrent requests run between the chunks of a long prompt instead of waiting for
all of it (chunked prefill)."""


@dataclass(frozen=True)
class _Pass:
    """A forward pass a session's job asks for: equal-length token rows on top of ``cache``."""

    rows: list[list[int]]
    cache: Any
    logits_to_keep: int


class _ForwardRunner:
    """Runs a member's forward passes for :class:`~specfuse_core.scheduler.Worker` (a ``BatchRunner``).

    Single-token decode steps of concurrent requests share a batch, and so do short multi-token passes
    (scoring, catching up after a round); a prompt prefill's chunks run alone rather than padding the others.
    """

    SHORT = 64

    def __init__(self, member: HFMember) -> None:
        self.member = member

    def batch_key(self, request: _Pass) -> Hashable:
        width = len(request.rows[0])
        return "step" if width == 1 else "short" if width <= self.SHORT else ("long", id(request))

    @torch.inference_mode()
    def run_batch(self, requests: list[_Pass]) -> list[tuple[torch.Tensor, Any]]:
        pad = self.member.tokenizer.pad_token_id or 0
        passes = [(r.rows, r.cache, r.logits_to_keep) for r in requests]
        with _threads.intra_op_threads(self._threads_for(requests)):
            return kv_cache.forward_batched(self.member.forward, passes, pad)

    def _threads_for(self, requests: list[_Pass]) -> int:
        """The calling thread's OpenMP threads, or fewer for a small pass on a CPU member whose worker has
        no budget of its own (the ``turns`` schedule) while idle OpenMP threads sleep (:func:`pass_threads`)."""
        threads = torch.get_num_threads()
        member = self.member
        if threads <= 1 or member.device.type != "cpu" or member.worker.threads is not None or openmp_spins():
            return threads
        width = max(len(r.rows[0]) for r in requests)
        positions = width * sum(len(r.rows) for r in requests)
        return pass_threads(threads, params=member.cost, positions=positions, width=width)


def _sample(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> int:
    if sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1).cpu()
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        outside = cumulative - sorted_probs >= sampling.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _drop_incomplete_characters(member: HFMember, tokens: list[int]) -> list[int]:
    """Byte-level tokenizers can stop inside a multi-byte character; leave it for the next round."""
    trimmed = list(tokens)
    for _ in range(3):
        if not trimmed or not member.decode(trimmed).endswith("\ufffd"):
            break
        trimmed.pop()
    return trimmed or tokens


def _name_from_source(source: str, gguf_file: str | None) -> str:
    base = gguf_file or source.rstrip("/\\")
    name = Path(base).name or base
    for suffix in (".gguf",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _model_context_window(model: Any) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def _find_end_of_turn(tokenizer: Any, template: str, plain: bool) -> int:
    """The token that closes an assistant turn in this member's chat format."""
    if not plain:
        marker = "SPECFUSEMARKER"
        try:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                chat_template=template,
                tokenize=False,
            )
            after = rendered[rendered.index(marker) + len(marker) :]
            for token_id in tokenizer.encode(after, add_special_tokens=False):
                if token_id in set(tokenizer.all_special_ids):
                    return int(token_id)
        except Exception:  # noqa: BLE001 - templates may reject this probe; fall back to EOS below
            pass
    if tokenizer.eos_token_id is None:
        raise ModelLoadError("the tokenizer has neither an end-of-turn token in its chat template nor an EOS token")
    return int(tokenizer.eos_token_id)


_END_MARKERS = ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<eos>")
"""Special tokens that end a text wherever a tokenizer has them. Qwen2.5's own generation config lists
``<|endoftext|>`` beside ``<|im_end|>``; copies converted from GGUF lose that list, and a drafter would
then write the token out as text."""


def _stop_token_ids(model: Any, tokenizer: Any, end_of_turn_id: int) -> frozenset[int]:
    ids = {end_of_turn_id}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(x) for x in configured)
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    vocab = tokenizer.get_vocab()
    ids.update(int(vocab[marker]) for marker in _END_MARKERS if marker in special and marker in vocab)
    return frozenset(ids)
