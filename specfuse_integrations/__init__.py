"""Thin adapters that put a specfuse ensemble behind LangChain and LlamaIndex interfaces."""
