import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny random Llama models with different BPE tokenizers, built once per test session."""
    from tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "a", vocab_size=300, seed=1), build_tiny_model(root / "b", vocab_size=420, seed=2)
