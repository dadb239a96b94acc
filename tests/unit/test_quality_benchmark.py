"""The IFEval quality benchmark: offline scoring, the resumable cache, aggregation and outputs (no models)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import if_verifiable  # noqa: F401 - a dev dependency: fail loudly if missing
import punkt  # noqa: F401 - a dev dependency: fail loudly if missing
import pytest

from specfuse_eval import ifeval, quality  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "ifeval_sample.jsonl"
LOWERCASE_NO_COMMA = {
    "key": 1,
    "prompt": "Write two sentences about cats in all lowercase letters, without any commas.",
    "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
    "kwargs": [{}, {}],
}
HASHTAGS = {
    "key": 2,
    "prompt": "Write a tweet. Include at least 4 hashtags, starting with '#'.",
    "instruction_id_list": ["keywords:letter_frequency"],
    "kwargs": [{"let_relation": "at least", "letter": "#", "let_frequency": 4}],
}
SENTENCES = {
    "key": 3,
    "prompt": "Answer in fewer than 3 sentences.",
    "instruction_id_list": ["length_constraints:number_sentences"],
    "kwargs": [{"relation": "less than", "num_sentences": 3}],
}


@pytest.fixture(autouse=True)
def _nltk_data(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLTK_DATA", str(tmp_path_factory.getbasetemp() / "nltk_data"))


def test_punkt_tab_files_are_written_and_read_by_nltk(tmp_path: Path) -> None:
    target = ifeval.write_punkt_tab(tmp_path)
    assert sorted(p.name for p in target.iterdir()) == sorted(ifeval.PUNKT_FILES)
    assert "dr" in (target / "abbrev_types.txt").read_text().split()
    from nltk.tabdata import PunktDecoder
    from punkt.data import load_bundled

    params, decoder = load_bundled("english"), PunktDecoder()
    with open(target / "collocations.tab", encoding="utf-8") as f:
        assert set(decoder.tab2tups(f)) == params.collocations
    with open(target / "ortho_context.tab", encoding="utf-8") as f:
        assert decoder.tab2intdict(f) == params.ortho_context
    with open(target / "sent_starters.txt", encoding="utf-8") as f:
        assert decoder.txt2set(f) == params.sent_starters


def test_scoring_passes_a_following_response_and_fails_a_violating_one() -> None:
    good = ifeval.score_response(LOWERCASE_NO_COMMA, "cats are soft. they sleep all day.")
    assert good["strict"] == [True, True] and good["binary_strict"] and good["binary_loose"]
    bad = ifeval.score_response(LOWERCASE_NO_COMMA, "Cats are soft, warm and lazy. They sleep.")
    assert bad["strict"] == [False, False] and not bad["binary_strict"] and not bad["binary_loose"]
    partial = ifeval.score_response(LOWERCASE_NO_COMMA, "cats are soft, warm and lazy.")
    assert partial["strict"] == [True, False] and not partial["binary_strict"]


def test_sentence_counting_uses_punkt() -> None:
    assert ifeval.score_response(SENTENCES, "Dr. Smith agrees. Yes.")["binary_strict"]
    assert not ifeval.score_response(SENTENCES, "One. Two. Three. Four.")["binary_strict"]


def test_loose_mode_forgives_a_preamble_line() -> None:
    scored = ifeval.score_response(LOWERCASE_NO_COMMA, "Sure, Here Is My Answer:\ncats purr. they nap.")
    assert scored["loose"] == [True, True] and scored["strict"] == [False, False]


def test_letter_frequency_counts_the_literal_hash_deterministically() -> None:
    for _ in range(5):  # upstream if-verifiable would pick a random letter and flip between runs
        assert ifeval.score_response(HASHTAGS, "fun day #a #b #c #d")["binary_strict"]
        assert not ifeval.score_response(HASHTAGS, "fun day #a #b #c")["binary_strict"]


def test_empty_response_fails_every_instruction() -> None:
    scored = ifeval.score_response(LOWERCASE_NO_COMMA, "")
    assert scored["strict"] == [False, False] and scored["loose"] == [False, False]


def test_sample_prompts_instructions_are_all_known() -> None:
    rows = quality.load_prompts(SAMPLE, limit=3)
    assert [r["key"] for r in rows] == [2798, 1092, 3478]
    for row in rows:
        scored = ifeval.score_response(row, "A short answer.")
        assert len(scored["strict"]) == len(row["instruction_id_list"])


def test_dev_split_instructions_are_all_known() -> None:
    data = REPO / quality.DEFAULT_DATA  # the shared data sets beside the checkout, where they exist
    if not data.exists():
        pytest.skip(f"the shared IFEval dev split is not present at {data}")
    rows = quality.load_prompts(data, limit=40)
    assert len(rows) == 40
    for row in rows:
        scored = ifeval.score_response(row, "A short answer.")
        assert len(scored["strict"]) == len(row["instruction_id_list"])


def _fake_record(config: str, text: str) -> dict:
    winners = ["a"] if config == "specfuse" else [config]
    contested = {"scorers": ["a", "b"], "scores": [[0.9, 0.5], [0.4, 0.6]], "candidate_drafters": [["a"], ["b"]]}
    trace = [
        {"winners": winners, "consensus": config != "specfuse", "calls": 4 if config == "specfuse" else 1,
         **(contested if config == "specfuse" else {})},  # fmt: skip
        {"winners": ["a", "b"], "consensus": True, "calls": 2},
    ]
    return {"response": text, "finish_reason": "stop", "rounds": 2, "calls": sum(t["calls"] for t in trace),
            "seconds": 1.5, "output_tokens": 7, "members": ["a", "b"], "exits": [], "trace": trace}  # fmt: skip


def test_resume_generates_only_missing_pairs_in_prompt_major_order(tmp_path: Path) -> None:
    cache = quality.ResponseCache(tmp_path)
    prompts = [LOWERCASE_NO_COMMA, HASHTAGS, SENTENCES]
    calls: list[tuple[str, int]] = []

    def answer(config: str, row: dict) -> dict:
        calls.append((config, row["key"]))
        if len(calls) == 4:
            raise KeyboardInterrupt  # the run is interrupted in the middle of prompt 2
        return _fake_record(config, f"{config} answer {row['key']}")

    with pytest.raises(KeyboardInterrupt):
        quality.run_all(prompts, ["a", "specfuse"], cache, answer)
    assert calls == [("a", 1), ("specfuse", 1), ("a", 2), ("specfuse", 2)]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["1.json", "2.json"]
    assert not list(tmp_path.rglob("*.tmp*"))

    calls.clear()
    records = quality.run_all(prompts, ["a", "specfuse"], cache, answer)
    assert calls == [("specfuse", 2), ("a", 3), ("specfuse", 3)]  # only what was missing
    assert [r["response"] for r in records["a"]] == ["a answer 1", "a answer 2", "a answer 3"]
    assert records["specfuse"][0]["key"] == 1 and records["specfuse"][0]["config"] == "specfuse"

    calls.clear()
    quality.run_all(prompts, ["a", "specfuse"], cache, answer)
    assert calls == []


def test_concurrent_answering_gives_the_same_records_in_order(tmp_path: Path) -> None:
    import threading
    import time

    prompts = [LOWERCASE_NO_COMMA, HASHTAGS, SENTENCES]
    running, most, lock = 0, 0, threading.Lock()

    def answer(config: str, row: dict) -> dict:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return _fake_record(config, f"{config} answer {row['key']}")

    sequential = quality.run_all(prompts, ["a", "specfuse"], quality.ResponseCache(tmp_path / "seq"), answer)
    assert most == 1
    together = quality.run_all(
        prompts, ["a", "specfuse"], quality.ResponseCache(tmp_path / "conc"), answer, concurrency=3
    )
    assert most == 3
    assert {c: [r["response"] for r in rs] for c, rs in together.items()} == {
        c: [r["response"] for r in rs] for c, rs in sequential.items()
    }


def test_torn_cache_file_is_answered_again(tmp_path: Path) -> None:
    cache = quality.ResponseCache(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.json").write_text('{"response": "trunc')
    assert cache.get("a", 1) is None
    cache.put("a", 1, {"response": "ok"})
    assert cache.get("a", 1) == {"response": "ok"}


def test_run_id_depends_on_generation_settings() -> None:
    base = quality.run_id(["x", "y"], 128, 10)
    assert base == quality.run_id(["x", "y"], 128, 10)
    assert len({base, quality.run_id(["x", "y"], 256, 10), quality.run_id(["x"], 128, 10),
                quality.run_id(["x", "y"], 128, 5), quality.run_id(["x", "y"], 128, 10, "bfloat16")}) == 5  # fmt: skip
    assert quality.run_id(["x", "y"], 128, 10, "float32") == base  # float32 answers cached before dtypes counted


def test_configs_expand_members_and_reject_unknown_names() -> None:
    specs = ["smollm2-135m-instruct", "/models/qwen::score"]
    assert quality.expand_configs(None, specs) == ["smollm2-135m-instruct", "qwen", *quality.DEFAULT_CONFIGS]
    assert quality.expand_configs(["members,specfuse+calibrated"], specs)[-1] == "specfuse+calibrated"
    assert quality.expand_configs(["members,specfuse+exit", "specfuse"], specs) == [
        "smollm2-135m-instruct", "qwen", "specfuse+exit", "specfuse"]  # fmt: skip
    with pytest.raises(SystemExit):
        quality.expand_configs(["specfuse+magic"], specs)


def test_summary_table_and_plot(tmp_path: Path) -> None:
    prompts = [LOWERCASE_NO_COMMA, HASHTAGS]
    rows = []
    answers = {"a": ["cats are soft. they sleep all day.", "#1 #2 #3 #4"], "specfuse": ["Cats, nap.", "#1"]}
    for config, texts in answers.items():
        records = [dict(_fake_record(config, t), key=p["key"]) for p, t in zip(prompts, texts)]
        scores = [ifeval.score_response(p, r["response"]) for p, r in zip(prompts, records)]
        rows.append(quality.summarize(config, records, scores, ["a", "b"]))
    a, fused = rows
    assert a["n"] == 2 and a["prompt_strict"] == 1.0 and a["instruction_strict"] == 1.0
    assert fused["prompt_loose"] == 0.0 and fused["instruction_strict"] == 0.0
    assert a["calls_per_round"] == 1.5 and fused["calls_per_round"] == 3.0 and fused["rounds_per_answer"] == 2
    assert fused["win_share"] == {"a": 1.0, "b": 0.0} and fused["consensus_share"] == 0.5
    assert a["wall_s"] == 3.0
    meta = {"n": 2, "data": "x.jsonl", "members": ["a", "b"], "max_tokens": 16, "segment_tokens": 10,
            "device": "cpu"}  # fmt: skip
    table = quality.markdown_table(rows, meta)
    assert "| a | 2 | 100.0 | 100.0 | 100.0 | 100.0 | 1.50 |" in table and "| specfuse | 2 | 0.0 |" in table
    quality.plot(rows, meta, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_only_cli_writes_outputs_from_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (LOWERCASE_NO_COMMA, HASHTAGS)))
    specs = ["a", "b"]
    run_dir = tmp_path / "results" / quality.run_id(specs, 16, 10)
    # A member alone is cached under its own run id, shared by every ensemble it belongs to.
    dirnames = quality.cache_dirnames(["a", "b", "specfuse"], specs, {}, 16, 10)
    cache = quality.ResponseCache(tmp_path / "results", dirnames)
    assert cache.path("a", 1).parent == tmp_path / "results" / quality.run_id(["a"], 16, 10) / "a"
    assert cache.path("specfuse", 1).parent.parent == run_dir
    answers = {"a": ("cats are soft. they sleep all day.", "#1 #2 #3 #4"), "b": ("Cats, nap.", "#1"),
               "specfuse": ("cats nap all day. they purr.", "#1")}  # fmt: skip
    for config, texts in answers.items():
        for key, text in zip((1, 2), texts):
            cache.put(config, key, dict(_fake_record(config, text), key=key))
    # --dtype float32: the answers above are cached under float32's run id; auto picks bf16 on some CPUs
    argv = ["--data", str(data), "--member", "a", "--member", "b", "--configs", "a,b,specfuse", "--max-tokens", "16",
            "--results", str(tmp_path / "results"), "--score-only", "--json", "--quiet", "--dtype", "float32"]  # fmt: skip
    assert quality.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 2 and out["configs"][0]["prompt_strict"] == 1.0
    assert out["configs"][0]["prompt_loose_ci"][1] == 1.0
    assert (run_dir / "results.md").exists() and (run_dir / "quality.png").exists()
    # a follows both prompts, specfuse one, b none: a is the reference; specfuse loses prompt 2.
    paired = {c["config"]: c for c in out["paired"]}
    assert set(paired) == {"b", "specfuse"} and paired["specfuse"]["reference"] == "a"
    assert (paired["specfuse"]["wins"], paired["specfuse"]["losses"], paired["specfuse"]["both"]) == (0, 1, 1)
    assert paired["b"]["losses"] == 2 and paired["b"]["mcnemar_p"] == pytest.approx(0.5)
    assert "not significant" in paired["specfuse"]["sentence"]
    report = (run_dir / "results.md").read_text()
    assert "## Paired comparison against the best member" in report and "## Length bias" in report


def test_diagnostics_explain_contested_rounds() -> None:
    records = [_fake_record("specfuse", "x"), _fake_record("specfuse", "y")]
    diag = quality.diagnostics(records, ["a", "b"])
    assert diag["contested_rounds"] == 2 and diag["rounds_by_phase"] == {"rounds 1-3": 2, "rounds 4+": 0}
    assert diag["win_share_by_phase"]["rounds 1-3"] == {"a": 1.0, "b": 0.0}
    assert diag["self_preference"] == {"a": 1.0, "b": 1.0} and diag["scorer_agreement"] == 0.0
    assert diag["decided_by"] == {"a": 1.0, "b": 0.0}
    assert diag["mean_raw_score"] == {"a": {"a": 0.9, "b": 0.5}, "b": {"a": 0.4, "b": 0.6}}
    # excluding self-scores: each draft gets one vote, normalised to 1 -> a tie, broken by the higher
    # self-score (a: 0.9 > b: 0.6), so the winner does not change
    assert diag["flip_if_exclude_self"] == 0.0
    # totals are not stored by _fake_record: no quality accumulates
    records = [dict(r, trace=[dict(t, totals=[0.7, 0.3], active=["a", "b"]) for t in r["trace"]]) for r in records]
    diag = quality.diagnostics(records, ["a", "b"])
    # one contested round, won by a: Q = (1, 0) in wins, (0.7, 0.3) in scores
    assert diag["final_quality_gap"] == {"wins": pytest.approx(1.0), "scores": pytest.approx(0.4)}
    assert 0.9 < diag["min_exit_entropy"]["scores"] < 1.0  # softmax((0.7, 0.3)) is nearly uniform: no exit
    assert diag["min_exit_entropy"]["wins"] == pytest.approx(0.8393, abs=1e-3)  # softmax((1, 0))
    table = quality.diagnostics_markdown({"specfuse": diag}, {"specfuse": {"a": {"fused_only": 1, "member_only": 0,
                                                                                  "both": 2}}})  # fmt: skip
    assert "| specfuse | 2 |" in table and "| specfuse | a | 1 | 0 | 2 |" in table


def test_fusion_overrides_and_cache_directories():
    pairs = ["score_mode=mean_logprob", "exclude_self_scores=true", "exit_temperature=0.5"]
    assert quality.parse_fusion_overrides(pairs) == {
        "score_mode": "mean_logprob", "exclude_self_scores": True, "exit_temperature": 0.5}  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        quality.parse_fusion_overrides(["score_mode"])
    assert quality.cache_dirname("smollm2-135m-instruct", {}) == "smollm2-135m-instruct"
    plain, exiting = quality.cache_dirname("specfuse", {}), quality.cache_dirname("specfuse+exit", {})
    assert plain.startswith("specfuse-") and exiting.startswith("specfuse+exit-") and plain[-8:] != exiting[-8:]
    assert quality.cache_dirname("specfuse", {"score_mode": "mean_logprob"}) != plain
    assert quality.cache_dirname("specfuse", {}) == plain  # stable
    # tie_break enters the hash only where it acts as the new coin (calibrated, rank), so answers cached
    # before the option existed stay valid for every other configuration
    assert "tie_break" not in quality.fusion_options("specfuse", {})
    assert quality.fusion_options("specfuse+calibrated", {})["tie_break"] == "coin"
    assert "tie_break" not in quality.fusion_options("specfuse+calibrated", {"tie_break": "self_score"})
    # the same for keep_exits: off, it is not in the hash (the stage-2 answers keep their directory)
    assert "keep_exits" not in quality.fusion_options("specfuse", {}) and plain == "specfuse-0a286761"
    assert quality.fusion_options("specfuse+keep-exit", {})["keep_exits"] is True
    cache = quality.ResponseCache("/r", {"specfuse": plain})
    assert str(cache.path("specfuse", 7)) == f"/r/{plain}/7.json"


def test_plot_labels_of_nearby_points_are_merged_so_none_overlaps() -> None:
    points = [(3.77, 15.0, "specfuse"), (2.89, 12.5, "specfuse+exit"), (2.81, 12.5, "specfuse+exit+weights"),
              (1.0, 22.5, "a"), (1.0, 15.0, "b")]  # fmt: skip
    groups = quality.label_groups(points, x_tolerance=0.3, y_tolerance=3.0)
    assert [names for _, _, names in groups] == [["specfuse"], ["specfuse+exit", "specfuse+exit+weights"], ["a"], ["b"]]
    assert groups[1][:2] == (2.89, 12.5)


def test_length_bias_counts_rounds_won_by_the_shorter_candidate() -> None:
    def round_(lengths, winner):
        drafters = [[m] for m in ("a", "b", "c")[: len(lengths)]]
        return {"consensus": False, "winners": drafters[winner], "candidate_drafters": drafters,
                "candidate_chars": lengths}  # fmt: skip

    trace = [round_([2, 40], 0), round_([2, 40], 0), round_([30, 40], 1), round_([10, 10], 0),
             round_([5, 10, 20], 0), {"consensus": True, "winners": ["a"], "candidate_drafters": [["a"]],
                                      "candidate_chars": [7]}]  # fmt: skip
    bias = quality.length_bias([{"trace": trace}])
    # Pairs of different lengths: (2 beat 40) x2, (40 beat 30), (5 beat 10), (5 beat 20); the 10/10 round has none.
    assert bias["pairs"] == 5 and bias["shorter_wins"] == pytest.approx(4 / 5)
    assert bias["by_ratio"]["0.00-0.25"] == {"pairs": 2, "shorter_wins": 1.0}  # 2/40
    assert bias["by_ratio"]["0.25-0.50"] == {"pairs": 1, "shorter_wins": 1.0}  # 5/20
    assert bias["by_ratio"]["0.50-0.75"] == {"pairs": 1, "shorter_wins": 1.0}  # 5/10
    assert bias["by_ratio"]["0.75-1.00"] == {"pairs": 1, "shorter_wins": 0.0}  # 30/40, the longer won
    assert bias["mean_chars"] == {"won": pytest.approx((2 + 2 + 40 + 10 + 5) / 5),
                                  "lost": pytest.approx((40 + 40 + 30 + 10 + 10 + 20) / 6)}  # fmt: skip
    table = quality.length_bias_markdown({"specfuse": {"length_bias": bias}})
    assert "| specfuse | 5 | 80.0% | 100.0% (2) |" in table


def test_specfuse_eval_prints_the_paired_comparison(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from specfuse_integrations import cli

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (LOWERCASE_NO_COMMA, HASHTAGS)))
    dirnames = quality.cache_dirnames(["a", "specfuse"], ["a", "b"], {}, 16, 10)
    cache = quality.ResponseCache(tmp_path / "results", dirnames)
    for config, texts in {"a": ("cats are soft. they sleep all day.", "#1 #2 #3 #4"),
                          "specfuse": ("Cats, nap.", "#1")}.items():  # fmt: skip
        for key, text in zip((1, 2), texts):
            cache.put(config, key, dict(_fake_record(config, text), key=key))
    argv = ["eval", "--data", str(data), "--member", "a", "--member", "b", "--configs", "a,specfuse", "--max-tokens",
            "16", "--results", str(tmp_path / "results"), "--score-only", "--quiet", "--dtype", "float32"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "## Paired comparison against the best member (loose)" in out
    assert "| specfuse | 2 | 0 | 2 | 0 | 0 | 0.5 | -100.0 |" in out
    assert "specfuse vs a on N = 2 prompts: 0 wins, 2 losses" in out and "not significant" in out


def test_lead_exit_replay_estimates_calls() -> None:
    def contested(winner):
        return {"consensus": False, "winners": [winner], "candidate_drafters": [["a"], ["b"]], "calls": 4}

    sweep = {"trace": [contested("a")] * 3 + [contested("a"), contested("b")]}  # 3-0 after 3 rounds: fires at round 3
    close = {"trace": [contested("a"), contested("b")] * 3}  # never more than 1 ahead
    estimate = quality.simulate_lead_exit([sweep, close], 1.645)
    # sweep: 3 rounds x 4 calls + 2 solo rounds x 1 = 14 instead of 20; close: 24 either way.
    # After the exit b's draft would still have won 1 of the 2 contested rounds.
    assert estimate == {"z": 1.645, "answers": 2, "fired": 0.5, "calls_ratio": round((14 + 24) / (20 + 24), 4),
                        "median_round": 3, "exited_later_wins": 0.5}  # fmt: skip
    assert quality.simulate_lead_exit([close], 1.0)["fired"] == 0.0


def test_split_votes_count_only_rounds_where_every_scorer_prefers_its_own_draft() -> None:
    def round_(scores, winner, scorers=("a", "b"), drafters=(["a"], ["b"])):
        return {"consensus": False, "scorers": list(scorers), "scores": scores, "winners": list(drafters)[winner],
                "candidate_drafters": list(drafters)}  # fmt: skip

    trace = [
        round_([[0.9, 0.5], [0.4, 0.6]], 0),  # split (a: own, b: own), a wins
        round_([[0.7, 0.5], [0.2, 0.8]], 1),  # split, b wins
        round_([[0.6, 0.5], [0.3, 0.9]], 1),  # split, b wins
        round_([[0.4, 0.6], [0.3, 0.9]], 1),  # both prefer b's draft: not a split
        round_([[0.9, 0.5], [0.4, 0.6]], 0, scorers=("b", "a")),  # rows swapped: each prefers the other's draft
        round_([[0.9, 0.5], [0.4, 0.6]], 0, drafters=(["a", "b"], ["c"])),  # a shared candidate
        {"consensus": True, "winners": ["a", "b"], "candidate_drafters": [["a", "b"]]},
    ]
    split = quality.split_votes([{"trace": trace}], ["a", "b"])
    assert split == {"rounds": 3, "win_share": {"a": pytest.approx(1 / 3, abs=1e-4), "b": pytest.approx(2 / 3, abs=1e-4)}}
    assert quality.split_votes([], ["a", "b"]) == {"rounds": 0, "win_share": {"a": None, "b": None}}
    diag = quality.diagnostics([{"trace": trace}], ["a", "b"])
    assert diag["split_votes"]["rounds"] == 3
    assert "a: 33.3%, b: 66.7% (3)" in quality.diagnostics_markdown({"specfuse": diag}, {})


def test_keep_exit_answers_come_in_prompt_order_with_the_evidence_of_the_answers_before(tmp_path: Path) -> None:
    prompts = [LOWERCASE_NO_COMMA, HASHTAGS, SENTENCES]
    seen: list[tuple[str, int, list[int]]] = []

    def answer(config: str, row: dict, earlier: Sequence[dict] = ()) -> dict:
        seen.append((config, row["key"], [r["key"] for r in earlier]))
        return {**_fake_record("specfuse", f"{config} answer {row['key']}"), "key": row["key"]}

    cache = quality.ResponseCache(tmp_path)
    quality.run_all(prompts[:2], ["specfuse+keep-exit"], cache, answer, concurrency=3)
    quality.run_all(prompts, ["specfuse", "specfuse+keep-exit"], cache, answer, concurrency=3)
    keep = [s for s in seen if s[0] == "specfuse+keep-exit"]
    assert keep == [("specfuse+keep-exit", 1, []), ("specfuse+keep-exit", 2, [1]), ("specfuse+keep-exit", 3, [1, 2])]
    assert all(not s[2] for s in seen if s[0] == "specfuse")


def test_exit_evidence_from_records_counts_verified_rounds_and_lead_exits() -> None:
    def round_(winners, candidates=2):
        return {"winners": winners, "candidates": candidates}

    first = {"trace": [round_(["a"]), round_(["a"]), round_(["a", "b"], candidates=1)], "exits": []}
    second = {"trace": [round_(["b"]), round_(["a"]), round_(["a"], candidates=1)],
              "exits": [{"member": "b", "round": 2, "reason": "significant lead against it (wins)"},
                        {"member": "c", "round": 1, "reason": "error: unreachable"}]}  # fmt: skip
    third = {"trace": [], "exits": [{"member": "b", "round": 0, "reason": "exited in an earlier request ..."}]}
    evidence = quality.exit_evidence_from_records([first, second, third])
    assert (dict(evidence.quality), evidence.rounds) == ({"a": 3.0, "b": 1.0}, 4)
    assert evidence.exited == {"b": "significant lead against it (wins)"}  # failures are not kept


def _scripted_pair() -> list:
    """Two scripted members that like drafts saying "good" and their own drafts, one more than the other:
    rounds 1 and 2 go to different members, round 3 is decided by the vote's normalisation or a tie-break."""
    from scripted import ScriptedMember

    def scorer(name: str, own: float, good: float):
        return lambda accepted, text, ends: 0.4 + good * ("good" in text) + own * (name in text)

    sharp = ScriptedMember("sharp", [("sharp good", False), ("sharp bad", False), ("sharp y", False), ("end", True)],
                           prob=scorer("sharp", 0.14, 0.3))  # fmt: skip
    flat = ScriptedMember("flat", [("flat bad", False), ("flat good", False), ("flat y", False), ("end", True)],
                          prob=scorer("flat", 0.03, 0.1))  # fmt: skip
    return [sharp, flat]


@pytest.mark.parametrize("options", [
    {}, {"normalize": "calibrated"}, {"normalize": "rank"}, {"score_mode": "mean_logit", "normalize": "ratio"},
    {"score_span": "leading"}, {"exclude_self_scores": True}, {"weights": True}, {"normalize": "softmax"},
    {"normalize": "calibrated", "tie_break": "self_score"},
])  # fmt: skip
def test_replay_decides_every_round_as_the_engine_did(options: dict) -> None:
    # The harness re-decides rounds with the engine's own rule (scoring.round_winner), so its
    # counterfactuals cannot drift from the engine: replayed under the same configuration, every
    # recorded winner and total comes back.
    from specfuse_core import Ensemble, FusionConfig

    config = FusionConfig(temperature=0, **options)
    result = Ensemble(_scripted_pair(), config).generate([{"role": "user", "content": "hi"}])
    record = quality.record_from_result(result, 0.0)
    replay = quality.replay_rounds(record, config, ["sharp", "flat"])
    assert len(replay) == sum(not t["consensus"] for t in record["trace"]) == 3
    for index, totals, winner in replay:
        t = record["trace"][index]
        assert t["candidate_drafters"][winner] == t["winners"]
        assert totals == pytest.approx(t["totals"])


def test_replay_needs_the_texts_for_a_coin_tie_break() -> None:
    from specfuse_core import FusionConfig

    record = _fake_record("specfuse", "x")  # cached before traces kept candidate texts
    assert quality.replay_rounds(record, FusionConfig(normalize="calibrated"), ["a", "b"]) == []
    assert len(quality.replay_rounds(record, FusionConfig(), ["a", "b"])) == 1
    assert quality.diagnostics([record], ["a", "b"], FusionConfig(normalize="rank"))["flip_if_exclude_self"] is None


def test_missing_data_says_which_file_and_how_to_pass_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from specfuse_eval import DataNotFoundError

    monkeypatch.chdir(tmp_path)  # not a checkout: the default data is not there
    with pytest.raises(DataNotFoundError, match=r"no --data given .* pass the data with --data PATH"):
        quality.load_prompts(None)
    with pytest.raises(DataNotFoundError, match="mine.jsonl does not exist"):
        quality.load_prompts("mine.jsonl")
    assert quality.main(["--member", "a", "--score-only", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: IFEval prompts (JSONL)" in err and quality.DEFAULT_DATA in err and "--data PATH" in err
    assert not (tmp_path / "benchmarks").exists()  # nothing written before the data is found


def test_default_data_and_results_are_found_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = tmp_path / "work"
    default = work / quality.DEFAULT_DATA
    default.parent.mkdir(parents=True)
    default.write_text(SAMPLE.read_text())
    monkeypatch.chdir(work)
    assert [r["key"] for r in quality.load_prompts(None, limit=2)] == [2798, 1092]
    # --results defaults to benchmarks/results/quality under the current directory, created on demand
    assert quality.main(["--member", "a", "--configs", "a", "--limit", "1", "--score-only", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["data"] == quality.DEFAULT_DATA and out["n"] == 0  # nothing cached yet
    assert Path(out["run_dir"]).parent == work / quality.DEFAULT_RESULTS
    assert (Path(out["run_dir"]) / "results.md").exists()


def test_a_missing_scoring_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from specfuse_eval import MissingDependencyError, require

    with pytest.raises(MissingDependencyError, match=r"'no_such_module_xyz'.*pip install 'specfuse\[eval\]'"):
        require("no_such_module_xyz", "IFEval scoring")
    monkeypatch.setattr(ifeval, "SCORING_PACKAGES", ("no_such_module_xyz",))
    monkeypatch.setattr(ifeval, "_READY", False)
    assert quality.main(["--data", str(SAMPLE), "--member", "a", "--score-only", "--quiet"]) == 2
    assert "pip install 'specfuse[eval]'" in capsys.readouterr().err


def test_the_benchmark_scripts_are_entry_points_of_the_package() -> None:
    import subprocess
    import sys

    from benchmarks import quality as script
    from benchmarks import tools as tools_script
    from specfuse_eval import bfcl

    assert script.run is quality.run and script.build_parser is quality.build_parser
    assert tools_script.run is bfcl.run and tools_script.load_entries is bfcl.load_entries
    for module in ("benchmarks.quality", "benchmarks.tools"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0 and f"python -m {module}" in done.stdout and "--data" in done.stdout


def test_the_package_stands_alone() -> None:
    # Shipped in the wheel: it may use the engine, never the front doors or a checkout's benchmarks/,
    # and it leaves sys.path alone; third-party packages are imported inside functions only.
    import ast

    allowed = set(sys.stdlib_module_names)
    for path in sorted((REPO / "specfuse_eval").glob("*.py")):
        source = path.read_text()
        assert "sys.path" not in source, path
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert not name.startswith(("specfuse_integrations", "benchmarks")), (path, name)
        for node in tree.body:  # module level
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), (path, ast.dump(node))
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (path, node.module)
