"""Load training runs into flat records: local run directories (docs/dev/CONTRACTS.md) or wandb runs.

A run that never wrote summary.json (killed, or crashed before its handler ran) is kept, with status
"missing", so a sweep's failures show up in the tables instead of vanishing from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

SUMMARY_KEYS = ("tokens_per_sec", "mfu", "peak_mem_gb", "final_train_loss", "final_val_loss", "steps")


@dataclass
class Run:
    name: str
    source: str  # run directory or wandb path
    status: str  # ok | oom | error | nan | missing
    backend: str  # attention backend name, or "hf" for model.impl=hf
    model: str
    seq_len: int | None
    batch_size: int | None
    attn_options: dict = field(default_factory=dict)
    dropout: float = 0.0
    seed: int | None = None
    data: str = "?"  # the training data and its tokenizer, e.g. "stdlib_docs (bytes)"
    device: str | None = None
    gpu_name: str | None = None
    error: str | None = None
    tokens_per_sec: float | None = None
    mfu: float | None = None
    peak_mem_gb: float | None = None
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    steps: int | None = None
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Backend plus the options that matter, e.g. 'block_sparse(pattern=local, block_size=128, window=256)'."""
        opts = dict(self.attn_options)
        if not opts or self.backend == "hf":
            return self.backend
        if "pattern" in opts:  # block-sparse: only the options its pattern's layout depends on
            keys = ["pattern", "block_size", *used_layout_options(tuple(sorted(opts.items())), self.seq_len or 4096)]
        else:
            keys = sorted(opts)
        return f"{self.backend}({', '.join(f'{k}={opts[k]}' for k in keys)})"

    @property
    def intervals(self) -> list[float]:
        """tokens/s of each timed log interval (the warm-up's are logged as null)."""
        return [h["perf/tokens_per_sec"] for h in self.history if h.get("perf/tokens_per_sec") is not None]

    def curve(self, key: str = "train/loss") -> tuple[list[int], list[float]]:
        pts = [(h["step"], h[key]) for h in self.history if h.get(key) is not None and "step" in h]
        return [p[0] for p in pts], [p[1] for p in pts]

    @classmethod
    def from_json(cls, d: dict) -> Run:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_json(self, with_history: bool = False) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("history", "config")}
        d["label"] = self.label
        if with_history:
            d["history"] = self.history
        return d


LAYOUT_OPTIONS = ("window", "stride", "num_global", "num_random", "seed")


@lru_cache(maxsize=256)
def used_layout_options(options: tuple, seq_len: int) -> list[str]:
    """The block-sparse options that change the layout of `options`' pattern (a changed value, a changed layout)."""
    from kernels.sparsity_patterns import build_layout

    opts = dict(options)
    block = int(opts.get("block_size", 128))
    layout = lambda o: build_layout(str(o["pattern"]), seq_len, block, **{k: int(o[k]) for k in LAYOUT_OPTIONS
                                                                           if k in o})
    try:
        base = layout(opts)
    except ValueError:  # a pattern this checkout does not know (a failed run's config): show every option
        return [k for k in LAYOUT_OPTIONS if k in opts]
    step = {"window": block}
    return [k for k in LAYOUT_OPTIONS if k in opts
            and not bool((layout({**opts, k: int(opts[k]) + step.get(k, 1)}) == base).all())]


def _get(cfg: dict, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def from_config(name: str, source: str, cfg: dict, summary: dict | None, history: list[dict]) -> Run:
    """Build a record from a resolved config (train.py's schema) and a summary (CONTRACTS.md keys)."""
    summary = summary or {}
    attn = dict(_get(cfg, "attn", {}) or {})
    backend = attn.pop("name", None) or summary.get("backend") or "?"
    impl = _get(cfg, "model.impl", "ours")
    if impl == "hf":
        backend, attn = "hf", {}
    dropout = _get(cfg, "model.attn_dropout")
    if dropout is None:
        dropout = _get(cfg, "model.dropout", 0.0)
    status = summary.get("status", "missing")
    if isinstance(summary.get("backend"), str) and impl != "hf" and not attn:
        backend = summary["backend"].split()[0]
    return Run(
        name=name, source=source, status=status, backend=backend,
        model=summary.get("model") or _get(cfg, "model.preset", "?"),
        seq_len=summary.get("seq_len") or _get(cfg, "train.seq_len"),
        batch_size=summary.get("batch_size") or _get(cfg, "train.batch_size"),
        attn_options=attn, dropout=float(dropout or 0.0), seed=_get(cfg, "train.seed"),
        data=f"{_get(cfg, 'data.name', '?')} ({_get(cfg, 'data.tokenizer', '?')})",
        device=cfg.get("device") or _get(cfg, "train.device"), gpu_name=cfg.get("gpu_name"),
        error=summary.get("error") or (None if summary else "no summary.json (run killed or never finished)"),
        history=history, config=cfg, **{k: summary.get(k) for k in SUMMARY_KEYS},
    )


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    pass
    return rows


def load_run_dir(path: str | Path) -> Run:
    path = Path(path)
    if (path / "config.json").exists():
        cfg = json.loads((path / "config.json").read_text())
    elif (path / ".hydra" / "config.yaml").exists():
        cfg = yaml.safe_load((path / ".hydra" / "config.yaml").read_text()) or {}
    else:
        cfg = {}
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return from_config(name, str(path), cfg, summary, read_jsonl(path / "metrics.jsonl"))


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").exists() or (path / ".hydra" / "config.yaml").exists()


def find_run_dirs(root: str | Path) -> list[Path]:
    """`root` itself if it is a run, else every run directory below it (a Hydra multirun sweep dir)."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found = {p.parent.parent if p.parent.name == ".hydra" else p.parent
             for pattern in ("summary.json", ".hydra/config.yaml") for p in root.rglob(pattern)}
    return sorted(found, key=lambda p: (str(p.parent), _job_number(p)))


def _job_number(p: Path):
    head = p.name.split("_", 1)[0]  # Hydra job dirs: "<num>" or "<num>_<overrides>"
    return (0, int(head), p.name) if head.isdigit() else (1, 0, p.name)


def load_runs(paths) -> list[Run]:
    return [load_run_dir(d) for root in paths for d in find_run_dirs(root)]


def load_wandb_runs(path: str, group: str | None = None, *, history: bool = True) -> list[Run]:
    """Runs of a wandb project ("entity/project"), optionally one group, through the public API."""
    import wandb

    filters = {"group": group} if group else {}
    runs = []
    for r in wandb.Api().runs(path, filters=filters):
        summary = {k: r.summary.get(k) for k in ("status", "error", "backend", "model", "seq_len", "batch_size",
                                                  *SUMMARY_KEYS)}
        summary = {k: v for k, v in summary.items() if v is not None}
        if "status" not in summary:  # a run that died before train.py wrote its summary
            summary["status"] = "missing" if r.state != "finished" else "ok"
        hist = []
        if history:
            for row in r.scan_history():
                step = row.get("step", row.get("_step"))
                hist.append({"step": step, **{k: v for k, v in row.items() if not k.startswith("_")}})
        runs.append(from_config(r.name, f"wandb:{path}/{r.id}", dict(r.config), summary, hist))
    return runs
