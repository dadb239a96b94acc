"""SpecFuseLLM on tiny random models: members with the same specs are loaded once and shared, also with
the LangChain adapter. The adapter's interface and translation: tests/unit/test_llama_index_adapter.py.
"""

from __future__ import annotations

from specfuse_integrations.llama_index import SpecFuseLLM


def test_same_member_specs_share_loaded_models(tiny_dirs):
    tiny_specs = [str(path) for path in tiny_dirs]
    first = SpecFuseLLM(members=tiny_specs, segment_tokens=4, max_tokens=8, temperature=0)
    second = SpecFuseLLM(members=tiny_specs, segment_tokens=2)
    assert first.ensemble is not second.ensemble
    assert all(a is b for a, b in zip(first.ensemble.members, second.ensemble.members))
    assert first.members == tiny_specs and first.config.segment_tokens == 4
    response = first.complete("Hello")  # random weights: structure only
    assert response.additional_kwargs["specfuse"]["rounds"] >= 1
    assert response.raw["text"] == response.text

    import specfuse_integrations.langchain as langchain
    chat_model = langchain.SpecFuseChatModel(members=tiny_specs)
    ensemble = chat_model.get_ensemble() if hasattr(chat_model, "get_ensemble") else chat_model.ensemble
    assert all(a is b for a, b in zip(first.ensemble.members, ensemble.members))
