"""Launch train.py in a child process (torchrun for several ranks): used by the reproduction and the scaling study.

The child's output goes to the terminal as it comes (its progress stays visible) and to a log file.
"""

from __future__ import annotations

import codecs
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# NVLink multicast off in every launch (NCCL's NVLS and symmetric memory)
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def train(overrides: list[str], log_path: Path, *, multirun: bool = False, nproc: int = 1,
          env: dict | None = None, echo: bool = True) -> dict:
    """Run `python train.py [-m] <overrides>` from the repository root (under torchrun when nproc > 1).

    Returns {"cmd": the command as a user would type it, "rc": exit code, "seconds": wall time}."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                if nproc > 1 else [sys.executable])
    args = [str(ROOT / "train.py"), *(["-m"] if multirun else []), *overrides]
    shown = shlex.join([*(["torchrun", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else ["python"]),
                        "train.py", *args[1:]])
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # keep the caller's too
    child_env = {**os.environ, **NO_MULTICAST, **(env or {}), "PYTHONPATH": path}
    if echo:
        print(f"+ {shown}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*launcher, *args], cwd=ROOT, env=child_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: proc.stdout.read1(1 << 14), b""):  # chunks, not lines: progress bars use \r
            log.write(chunk)
            if echo:
                sys.stdout.write(text.decode(chunk))
                sys.stdout.flush()
        rc = proc.wait()
    return {"cmd": shown, "rc": rc, "seconds": round(time.time() - t0, 1)}
