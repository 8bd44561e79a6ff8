import os

import pytest
import torch

# Without a GPU, Triton kernels run through the interpreter; it must be chosen before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def kernel_device() -> str:
    """Where the Triton kernel tests run: compiled on a GPU host, through the interpreter on CPU tensors otherwise.
    The same cases run on both (one process cannot mix them: the interpreter is chosen when triton is imported)."""
    if INTERPRET:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("Triton kernels need a CUDA GPU or TRITON_INTERPRET=1")
