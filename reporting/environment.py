"""The stamp on every result: GPU, library versions, commit and date."""

from __future__ import annotations

import datetime
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """GPU, versions, date, and the commit of the code that ran (this checkout)."""
    import torch

    status = _git("status", "--porcelain")
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": _version("triton"), "transformers": _version("transformers"),
        "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD") or None, "git_dirty": None if status is None else bool(status),
    }


def one_line(env: dict) -> str:
    """'NVIDIA H200, torch 2.9, triton 3.5, 2026-01-01 12:00:00 UTC, commit abc1234' for titles and captions."""
    parts = [env.get("gpu") or "CPU", f"torch {env.get('torch')}", f"triton {env.get('triton')}", env.get("date_utc")]
    if env.get("git_commit"):
        parts.append(f"commit {env['git_commit'][:7]}" + (" (modified)" if env.get("git_dirty") else ""))
    return ", ".join(str(p) for p in parts if p)
