"""`OpenAICompatibleMember`: a model served over an OpenAI-compatible HTTP API (needs the ``remote`` extra).

Servers: llama-cpp-python, vLLM and SGLang (draft *and* score), or OpenAI-style chat APIs (draft only).

- Drafting uses ``/v1/completions`` on the prompt rendered with the member's chat template (from a
  local tokenizer or template when given, else the server's template where it has one, else ChatML),
  with ``logprobs`` so that the drafter's score of its own draft costs no extra request.
- Scoring echoes ``prompt + accepted + candidate`` with ``echo`` + ``logprobs`` and ``max_tokens=1``
  (``0`` means *unlimited* on llama-cpp-python) and drops the generated token. vLLM and SGLang take
  all candidates of a round in one request (a list prompt); llama-cpp-python accepts one prompt per
  request, so it gets one request per candidate that the member did not draft itself. Each
  candidate's tokens are found from the end of the echoed prompt, so BOS tokens that the server
  drops from the echo do not matter. For llama-cpp-python the prompt is made to start with the BOS
  token, which avoids the off-by-one of abetlen/llama-cpp-python#1983.
- Token counts (for the answer budget) come from the local tokenizer when there is one; otherwise
  they are estimated from a characters-per-token ratio measured on the server's tokenizer.

API keys come from ``api_key=`` or the ``SPECFUSE_API_KEY`` / ``OPENAI_API_KEY`` environment
variables. They are sent only in the ``Authorization`` header and never appear in ``repr``,
exceptions or traces.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, MemberError
from .member import Draft, Role, SamplingParams, TokenScores, role_flags
from .messages import Message
from .prompting import NO_NATIVE_SUPPORT, ToolSupport, needs_tool_rendering, prepare_messages, probe_tool_support
from .tools import NO_TOOLS, ToolRequest
from .trace import MemberUsage

DIALECTS = ("auto", "llama_cpp", "vllm", "sglang", "openai")
API_KEY_ENV = ("SPECFUSE_API_KEY", "OPENAI_API_KEY")

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Used when neither a local tokenizer/template nor the server provides a chat template."""

CONTINUE_INSTRUCTION = "Continue your previous answer exactly where it stopped. Do not repeat any of it."


class RemoteError(MemberError):
    """A remote member's request failed (unreachable, timed out, HTTP error, malformed reply)."""


class RemoteAuthError(RemoteError):
    """The server rejected the credentials (HTTP 401/403)."""


class RemoteProtocolError(RemoteError):
    """The server answered, but not in the shape an OpenAI-compatible server should."""


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "remote members need httpx: install the 'remote' extra (pip install 'specfuse[remote]')"
        ) from error
    return httpx


def parse_remote_spec(source: str) -> tuple[str, str | None]:
    """``"http://host:port/v1#model"`` -> ``("http://host:port/v1", "model")``."""
    url, _, model = source.partition("#")
    return url.rstrip("/"), (model or None)


class OpenAICompatibleMember:
    """A member served by an OpenAI-compatible API.

    ``base_url`` ends in ``/v1`` (added when missing). ``model`` defaults to the first model of
    ``/v1/models``. ``dialect`` is ``"auto"`` (detected from ``/v1/models``), ``"llama_cpp"``,
    ``"vllm"``, ``"sglang"`` or ``"openai"`` (chat completions, draft-only). ``tokenizer`` is a
    local tokenizer object, directory or preset name for the served model: it gives the exact chat
    template, BOS and token counts. ``transport`` is an ``httpx`` transport (for tests).
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        dialect: str = "auto",
        tokenizer: Any = None,
        chat_template: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        name: str | None = None,
        role: Role = "both",
        context_window: int | None = None,
        transport: Any = None,
    ) -> None:
        _httpx()
        if dialect not in DIALECTS:
            raise ConfigError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ConfigError("timeout must be > 0, max_retries and backoff >= 0")
        url = base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        self.base_url = url
        parts = urlsplit(url)
        self.server_root = f"{parts.scheme}://{parts.netloc}"
        self.model = model
        self._api_key = api_key or next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self.dialect = dialect
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.role: Role = role
        self._can_draft, self._can_score = role_flags(role)
        self.name = name or (f"{model}@{parts.netloc}" if model else parts.netloc)
        self._context_window = context_window
        self._transport = transport
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self.tokenizer = _load_tokenizer(tokenizer) if tokenizer is not None else None
        self.chat_template = chat_template or (getattr(self.tokenizer, "chat_template", None) if self.tokenizer else None)
        self.template_source = "local" if self.chat_template else None
        self.bos_text: str | None = getattr(self.tokenizer, "bos_token", None) if self.tokenizer else None
        self.end_text: str | None = None
        self.chars_per_token = 4.0
        self.notes: list[str] = []
        self._ready = False
        self._support: ToolSupport | None = None

    # -- the Member protocol --------------------------------------------------------------------

    @property
    def can_draft(self) -> bool:
        return self._can_draft

    @property
    def can_score(self) -> bool:
        """False for the ``openai`` dialect: chat APIs cannot score given text."""
        return self._can_score and self.dialect != "openai"

    @property
    def context_window(self) -> int | None:
        return self._context_window

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleMember(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r}, "
            f"dialect={self.dialect!r}, role={self.role!r}, api_key={'set' if self._api_key else 'none'})"
        )

    async def open_session(
        self, messages: list[Message], *, cache: bool = True, seed: int | None = None, tools: ToolRequest | None = None
    ) -> RemoteSession:
        """Start a request. Under a grammar a remote member drafts freely; the engine cuts its drafts
        to their longest valid prefix and says so in the trace."""
        await self._prepare()
        request = tools or NO_TOOLS
        support = self._tool_support() if needs_tool_rendering(messages, request) else NO_NATIVE_SUPPORT
        prepared, tool_list = prepare_messages(messages, request, support)
        prompt = await self._render_prompt(prepared, tool_list)
        session = RemoteSession(self, prompt, seed=seed)
        session.native_tools = tool_list is not None
        session.messages = prepared if tool_list is None else prepare_messages(messages, request, NO_NATIVE_SUPPORT)[0]
        return session

    async def prompt_tokens(self, messages: list[Message], tools: ToolRequest | None = None) -> int | None:
        """The length of the rendered prompt when this member has a local tokenizer (else ``None``:
        the server counts, and a prompt it cannot hold makes the member exit when it is sent)."""
        if self.tokenizer is None:
            return None
        await self._prepare()
        request = tools or NO_TOOLS
        support = self._tool_support() if needs_tool_rendering(messages, request) else NO_NATIVE_SUPPORT
        prepared, tool_list = prepare_messages(messages, request, support)
        return self.count_tokens(await self._render_prompt(prepared, tool_list))

    def _tool_support(self) -> ToolSupport:
        """Native tool rendering only with a local tokenizer (its template can be probed); else the fallback."""
        if self.tokenizer is None:
            return NO_NATIVE_SUPPORT
        if self._support is None:
            self._support = probe_tool_support(
                lambda messages, tools: self.tokenizer.apply_chat_template(
                    messages,
                    chat_template=self.chat_template,
                    add_generation_prompt=True,
                    tokenize=False,
                    **({"tools": tools} if tools else {}),
                )
            )
        return self._support

    # -- transport ------------------------------------------------------------------------------

    def _client(self) -> Any:
        """One ``httpx.AsyncClient`` per event loop (a client is bound to the loop that made it)."""
        httpx = _httpx()
        loop = asyncio.get_running_loop()
        for other in [x for x in self._clients if x.is_closed()]:
            self._clients.pop(other, None)
        client = self._clients.get(loop)
        if client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                headers=headers,
                transport=self._transport,
                limits=httpx.Limits(max_keepalive_connections=8, max_connections=16),
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    async def request(self, method: str, url: str, payload: dict[str, Any] | None = None) -> Any:
        """One JSON request with retries and exponential backoff on timeouts, connection errors, 429 and 5xx."""
        httpx = _httpx()
        where = f"{self.name}: {method} {urlsplit(url).path}"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            delay = self.backoff * (2**attempt) * (0.8 + 0.4 * random.random())
            try:
                response = await self._client().request(method, url, json=payload)
            except httpx.TimeoutException:
                if last:
                    raise RemoteError(f"{where} timed out after {self.timeout:g}s ({attempts} attempt(s))") from None
                await asyncio.sleep(delay)
                continue
            except httpx.TransportError as error:
                if last:
                    reason = self._redact(str(error)) or type(error).__name__
                    raise RemoteError(
                        f"{where}: could not reach the server ({type(error).__name__}: {reason}; {attempts} attempt(s))"
                    ) from None
                await asyncio.sleep(delay)
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                if last:
                    raise RemoteError(f"{where}: HTTP {status} after {attempts} attempt(s): {self._snippet(response)}")
                retry_after = _retry_after(response)
                await asyncio.sleep(min(retry_after, 30.0) if retry_after is not None else delay)
                continue
            if status in (401, 403):
                raise RemoteAuthError(
                    f"{where}: HTTP {status}, the server rejected the credentials "
                    f"(API key {'given' if self._api_key else 'missing'}; pass api_key= or set SPECFUSE_API_KEY)"
                )
            if status >= 400:
                raise RemoteError(f"{where}: HTTP {status}: {self._snippet(response)}")
            try:
                return response.json()
            except ValueError:
                raise RemoteProtocolError(f"{where}: malformed JSON in the reply: {self._snippet(response)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _snippet(self, response: Any) -> str:
        text = self._redact(response.text.strip().replace("\n", " "))
        return (text[:200] + "...") if len(text) > 200 else (text or "(empty body)")

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        data = await self.request("POST", self.base_url + path, payload)
        if not isinstance(data, dict):
            raise RemoteProtocolError(f"{self.name}: POST {path}: expected a JSON object, got {type(data).__name__}")
        if "error" in data and "choices" not in data:
            raise RemoteError(f"{self.name}: POST {path}: server error: {self._redact(str(data['error']))[:200]}")
        return data

    # -- set-up ---------------------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Find the model and dialect, the template and the tokenizer ratio (once per member)."""
        if self._ready:  # no lock: sessions may run on different event loops; a race only repeats discovery
            return
        await self._discover()
        if self.end_text is None:
            self.end_text = _end_of_turn_text(self)
        if self.tokenizer is None and self.dialect in ("llama_cpp", "vllm"):
            await self._measure_ratio()
        note = "draft-only: this server cannot score given text (no echo + logprobs)"
        if self.dialect == "openai" and self._can_score and note not in self.notes:
            self.notes.append(note)
            self.role = "draft"
        self._ready = True

    async def _discover(self) -> None:
        needs_models = self.model is None or self.dialect == "auto"
        if not needs_models:
            return
        data = await self.request("GET", self.base_url + "/models")
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list) or not models or not isinstance(models[0], dict):
            raise RemoteProtocolError(f"{self.name}: GET /v1/models returned no models")
        entry = next((m for m in models if m.get("id") == self.model), models[0]) if self.model else models[0]
        if self.model is None:
            self.model = str(entry.get("id"))
        if self.dialect == "auto":
            self.dialect = _detect_dialect(entry, self.server_root)
        if self._context_window is None and isinstance(entry.get("max_model_len"), int):
            self._context_window = int(entry["max_model_len"])

    async def _render_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        if self.dialect == "openai":
            return ""
        if self.tokenizer is not None:
            prompt = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                add_generation_prompt=True,
                tokenize=False,
                **({"tools": tools} if tools else {}),
            )
        elif self.chat_template is not None:
            prompt = _render_template(self.chat_template, messages)
        else:
            prompt = await self._server_template(messages)
            if prompt is None:
                if "chat template: ChatML (server has none)" not in self.notes:
                    self.notes.append("chat template: ChatML (server has none)")
                prompt = _render_template(CHATML_TEMPLATE, messages)
        if self.dialect == "llama_cpp" and self.bos_text and not prompt.startswith(self.bos_text):
            prompt = self.bos_text + prompt  # llama.cpp adds it anyway; explicit BOS keeps echo aligned
        return prompt

    async def _server_template(self, messages: list[Message]) -> str | None:
        """vLLM renders the chat template in ``/tokenize`` (``messages``); detokenize gives the prompt text."""
        if self.dialect != "vllm":
            return None
        try:
            ids = await self.request(
                "POST", self.server_root + "/tokenize", {"model": self.model, "messages": messages, "add_generation_prompt": True}
            )
            text = await self.request("POST", self.server_root + "/detokenize", {"model": self.model, "tokens": ids["tokens"]})
            self.template_source = "server"
            return str(text["prompt"])
        except (RemoteError, KeyError, TypeError):
            return None

    async def _measure_ratio(self) -> None:
        sample = "The quick brown fox jumps over the lazy dog. Paris is the capital of France; 2 + 2 = 4."
        try:
            if self.dialect == "llama_cpp":
                data = await self.request("POST", self.server_root + "/extras/tokenize", {"input": sample})
            else:
                data = await self.request("POST", self.server_root + "/tokenize", {"model": self.model, "prompt": sample})
            count = len(data["tokens"])
            if count > 0:
                self.chars_per_token = len(sample) / count
        except (RemoteError, KeyError, TypeError):
            pass

    # -- tokens ---------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return max(1, math.ceil(len(text) / self.chars_per_token))

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        if self.count_tokens(text) <= max_tokens:
            return text
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
            return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text[: int(max_tokens * self.chars_per_token)]


@dataclass
class _OwnDraft:
    accepted: str
    tokens: list[str]
    logprobs: list[float]
    end_logprob: float | None = None  # of the end-of-turn token, when the draft stopped on it


class RemoteSession:
    """One request's state in an :class:`OpenAICompatibleMember`: the rendered prompt and accepted text."""

    def __init__(self, member: OpenAICompatibleMember, prompt: str, *, seed: int | None) -> None:
        self.member = member
        self.prompt = prompt
        self.seed = seed
        self.messages: list[Message] = []
        self.native_tools = False
        self.accepted_text = ""
        self.usage = MemberUsage(prompt_tokens=member.count_tokens(prompt) if prompt else 0)
        self._own: _OwnDraft | None = None
        self.requests = 0
        """HTTP requests this session made (draft + score)."""

    # -- the MemberSession protocol -------------------------------------------------------------

    async def draft(self, max_new_tokens: int, sampling: SamplingParams) -> Draft:
        member = self.member
        if member.dialect == "openai":
            return await self._chat_draft(max_new_tokens, sampling)
        payload: dict[str, Any] = {
            "model": member.model,
            "prompt": self.prompt + self.accepted_text,
            "max_tokens": max(1, int(max_new_tokens)),  # never 0: llama-cpp-python reads 0 as unlimited
            "temperature": float(sampling.temperature),
            "top_p": float(sampling.top_p) if not sampling.greedy else 1.0,
            "logprobs": 1,
            "stop": [member.end_text] if member.end_text else [],
        }
        seed = self.seed if self.seed is not None else sampling.seed
        if seed is not None:
            payload["seed"] = int(seed)
        data = await self._post("/completions", payload)
        choice = _first_choice(data, member.name)
        text = choice.get("text")
        if not isinstance(text, str):
            raise RemoteProtocolError(f"{member.name}: completion without text")
        finish = choice.get("finish_reason")
        logprobs = choice.get("logprobs")
        tokens: list[str] = []
        values: list[float] = []
        if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
            tokens = [str(t) for t in logprobs["tokens"]]
            values = [float(v) if v is not None else 0.0 for v in logprobs.get("token_logprobs") or []]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        count = int(usage.get("completion_tokens") or len(tokens) or member.count_tokens(text))
        if usage.get("prompt_tokens") and not self.accepted_text:
            self.usage.prompt_tokens = int(usage["prompt_tokens"])
        ended = finish == "stop"
        self.usage.generated_tokens += count
        self.usage.calls += 1
        end_logprob: float | None = None
        if ended and len(tokens) > 1 and len(values) == len(tokens) and "".join(tokens[:-1]) == text:
            # vLLM lists the end-of-sequence token that stopped the draft; its text leaves it out
            if tokens[-1] == member.end_text:
                end_logprob = values[-1]
            tokens, values = tokens[:-1], values[:-1]
        if tokens and len(values) == len(tokens) and "".join(tokens) == text:
            self._own = _OwnDraft(self.accepted_text, tokens, values, end_logprob)
        return Draft(text=text, ended=ended, hit_budget=not ended and count >= max_new_tokens, tokens=count)

    async def score(self, candidates: Sequence[tuple[str, bool]]) -> list[TokenScores]:
        member = self.member
        if not member.can_score:
            raise RemoteError(f"{member.name} is draft-only ({member.dialect} dialect cannot score given text)")
        results: list[TokenScores | None] = [self._reused(text, ends) for text, ends in candidates]
        todo = [i for i, r in enumerate(results) if r is None]
        base = self.prompt + self.accepted_text
        prompts = [base + candidates[i][0] + (member.end_text or "" if candidates[i][1] else "") for i in todo]
        if todo:
            if member.dialect == "llama_cpp":  # one prompt per request (its server asserts len(prompt) <= 1)
                choices = []
                for prompt in prompts:
                    data = await self._post("/completions", self._echo_payload(prompt))
                    choices.append((_first_choice(data, member.name), _completion_tokens(data)))
            else:
                data = await self._post("/completions", self._echo_payload(prompts))
                listed = data.get("choices")
                if not isinstance(listed, list) or len(listed) != len(prompts):
                    raise RemoteProtocolError(f"{member.name}: expected {len(prompts)} choices in the scoring reply")
                ordered = sorted(listed, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
                choices = [(c, 1) for c in ordered]
            for i, (choice, generated) in zip(todo, choices):
                text, ends = candidates[i]
                results[i] = _candidate_scores(choice, text, ends and bool(member.end_text), generated, member.name)
        for r in results:
            self.usage.scored_tokens += len(r.logprobs) if r is not None else 0
        self.usage.calls += 1
        return [r for r in results if r is not None]

    def accept(self, accepted_text: str) -> None:
        self.accepted_text = accepted_text
        self._own = None

    def count_tokens(self, text: str) -> int:
        return self.member.count_tokens(text)

    def truncate_to_tokens(self, text: str, max_tokens: int) -> str:
        return self.member.truncate_to_tokens(text, max_tokens)

    async def aclose(self) -> None:
        self._own = None

    # -- helpers --------------------------------------------------------------------------------

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        return await self.member.post(path, payload)

    def _echo_payload(self, prompt: str | list[str]) -> dict[str, Any]:
        # max_tokens=1, not 0: llama-cpp-python treats 0 as "unlimited"; the one generated token is dropped.
        return {"model": self.member.model, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}

    def _reused(self, text: str, ends: bool) -> TokenScores | None:
        """A candidate that is this member's own draft (or a token-aligned prefix of it) was scored while drafting."""
        own = self._own
        if own is None or own.accepted != self.accepted_text or not text:
            return None
        if ends:  # the whole draft and the end-of-turn token it stopped on
            if own.end_logprob is None or "".join(own.tokens) != text:
                return None
            picked = [*own.logprobs, own.end_logprob]
            return TokenScores(picked, picked)
        joined = ""
        for k, token in enumerate(own.tokens):
            joined += token
            if joined == text:
                return TokenScores(own.logprobs[: k + 1], own.logprobs[: k + 1])
            if len(joined) > len(text):
                break
        return None

    async def _chat_draft(self, max_new_tokens: int, sampling: SamplingParams) -> Draft:
        messages: list[dict[str, str]] = [dict(m) for m in self.messages]
        if self.accepted_text:
            messages += [
                {"role": "assistant", "content": self.accepted_text},
                {"role": "user", "content": CONTINUE_INSTRUCTION},
            ]
        payload: dict[str, Any] = {
            "model": self.member.model,
            "messages": messages,
            "max_tokens": max(1, int(max_new_tokens)),
            "temperature": float(sampling.temperature),
            "logprobs": True,
        }
        if not sampling.greedy:
            payload["top_p"] = float(sampling.top_p)
        if self.seed is not None:
            payload["seed"] = int(self.seed)
        data = await self._post("/chat/completions", payload)
        choice = _first_choice(data, self.member.name)
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            raise RemoteProtocolError(f"{self.member.name}: chat completion without message content")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        count = int(usage.get("completion_tokens") or self.member.count_tokens(text))
        ended = choice.get("finish_reason") == "stop"
        self.usage.generated_tokens += count
        self.usage.calls += 1
        return Draft(text=text, ended=ended, hit_budget=not ended and count >= max_new_tokens, tokens=count)


# -- helpers ------------------------------------------------------------------------------------


def _first_choice(data: dict[str, Any], name: str) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RemoteProtocolError(f"{name}: reply has no choices")
    return choices[0]


def _completion_tokens(data: dict[str, Any]) -> int:
    usage = data.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return 1


def _candidate_scores(choice: dict[str, Any], text: str, ends: bool, generated: int, name: str) -> TokenScores:
    """Per-token log-probabilities of one candidate from an echoed prompt.

    The candidate is the tail of the prompt: after dropping the ``generated`` tokens, walk back one
    token for the end-of-turn token (when ``ends``; servers show it as ``""`` or as its text) and then
    over tokens until they cover the candidate's characters (a token straddling the boundary with
    the accepted text counts as the candidate's, as it would in a local member).
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        raise RemoteProtocolError(f"{name}: the scoring reply has no logprobs (does this server support echo + logprobs?)")
    tokens = logprobs.get("tokens")
    values = logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise RemoteProtocolError(f"{name}: the scoring reply has malformed logprobs")
    end = len(tokens) - max(0, generated)
    if end <= 0:
        raise RemoteProtocolError(f"{name}: the scoring reply echoed no prompt tokens")
    start = end
    if ends:
        start -= 1
    covered = 0
    while covered < len(text) and start > 0:
        start -= 1
        covered += len(str(tokens[start]))
    if start == end:
        return TokenScores([], [])
    picked = [float(v) if v is not None else 0.0 for v in values[start:end]]
    return TokenScores(picked, picked)


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _detect_dialect(entry: dict[str, Any], server_root: str) -> str:
    owner = str(entry.get("owned_by", "")).lower()
    host = urlsplit(server_root).netloc.lower()
    if "vllm" in owner:
        return "vllm"
    if "sglang" in owner:
        return "sglang"
    if owner == "me":  # llama-cpp-python's /v1/models
        return "llama_cpp"
    if host.endswith("openai.com") or owner in ("openai", "system", "openai-internal", "llamacpp"):
        # OpenAI chat models, and llama.cpp's own llama-server (no prompt log-probabilities): draft-only
        return "openai"
    return "vllm"  # the most common OpenAI-compatible server with echo + logprobs


def _render_template(template: str, messages: list[Message]) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ConfigError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token=""
    )


def _end_of_turn_text(member: OpenAICompatibleMember) -> str | None:
    """The text that closes an assistant turn in the member's template (``<|im_end|>`` for ChatML)."""
    marker = "SPECFUSEMARKER"
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    try:
        if member.tokenizer is not None:
            rendered = member.tokenizer.apply_chat_template(
                probe, chat_template=member.chat_template, tokenize=False
            )
        else:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            rendered = ImmutableSandboxedEnvironment().from_string(member.chat_template or CHATML_TEMPLATE).render(
                messages=probe, add_generation_prompt=False, bos_token="", eos_token=""
            )
        after = rendered[rendered.index(marker) + len(marker) :].strip()
        text = after.split()[0] if after else ""
    except Exception:  # noqa: BLE001 - templates may reject the probe
        text = ""
    if text:
        return text
    eos = getattr(member.tokenizer, "eos_token", None) if member.tokenizer is not None else None
    return eos or None


def _load_tokenizer(tokenizer: Any) -> Any:
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    from .loading import resolve_source

    try:
        return AutoTokenizer.from_pretrained(resolve_source(str(tokenizer)))
    except MemberError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"could not load the tokenizer {str(tokenizer)!r}: {error}") from error
