"""The documentation's links resolve and its commands are valid as written: every relative link in README.md and
docs/ names a file that exists; every `python train.py ...` line composes and validates under Hydra (each value of a
-m sweep); every `python scripts/X.py` exists and knows the --options it is shown with."""

import itertools
import re
import shlex
from pathlib import Path

import pytest

from training.config import compose, validate

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(md: Path) -> list[str]:
    return [t for t in LINK.findall(md.read_text()) if not re.match(r"[a-z]+:|#", t)]


def commands(prefix: str) -> list[list[str]]:
    """The README's indented command lines that run `prefix` (comments and `<placeholders>` lines left out)."""
    found = []
    for line in (ROOT / "README.md").read_text().splitlines():
        line = line.split("  #")[0].strip()
        for part in line.split("&&"):
            words = shlex.split(part.strip()) if part.strip().startswith(("python", "torchrun")) else []
            if prefix in words and not any("<" in w for w in words):
                found.append(words[words.index(prefix) + 1:])
    return found


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md):
    missing = [t for t in relative_links(md) if not (md.parent / t.split("#")[0]).exists()]
    assert not missing, f"{md.relative_to(ROOT)} links to missing files: {missing}"


def test_documented_train_commands_compose_and_validate():
    runs = commands("train.py")
    assert len(runs) >= 10, runs
    for args in runs:
        overrides = [a for a in args if a != "-m"]
        values = [[f"{k}={v}" for v in vs.split(",")] for k, vs in (o.split("=", 1) for o in overrides)]
        for combination in itertools.product(*values):
            validate(compose(list(combination)))


def test_documented_scripts_exist_and_take_their_options():
    runs = [(words[0], words[1:]) for words in (w for w in commands("python") if w and w[0].startswith("scripts/"))]
    assert len(runs) >= 10, runs
    for script, args in runs:
        source = (ROOT / script).read_text()
        unknown = [a for a in args if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]
        assert not unknown, f"{script} is documented with options it does not define: {unknown}"
