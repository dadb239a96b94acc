"""``specfuse serve``: the ensemble behind an OpenAI-compatible HTTP API (needs the ``serve`` extra).

>>> from specfuse_integrations.server import create_app, serve
>>> serve(lambda: Ensemble.from_specs(None), port=8000)   # what `specfuse serve` runs
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
