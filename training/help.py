"""`python train.py --help`: the config groups' choices and every schema field with its description.

The descriptions are the schema's own end-of-line comments (training/config.py), so they are written once.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize

HEADER = """flashgpt: train GPT-2 with a swappable attention backend.

    python train.py                                   # the quickstart (experiment=quickstart)
    python train.py experiment=throughput attn=flash  # group=option picks a config file; key=value sets a field
    python train.py -m attn=sdpa,flash                # a sweep
    python train.py train.init_from=resume train.resume_from=outputs/<date>/<time>
"""


def comments(cls) -> dict[str, str]:
    """field name -> its end-of-line comment in the class source."""
    found, line_field = {}, {}
    source = inspect.getsource(cls)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.start[0] not in line_field:
            line_field[tok.start[0]] = tok.string
        if tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            found[line_field[tok.start[0]]] = tok.string.lstrip("# ")
    return found


def field_lines(schema) -> list[str]:
    lines = []
    for section in dataclasses.fields(schema):
        cls = section.default_factory if section.default_factory is not dataclasses.MISSING else None
        if not dataclasses.is_dataclass(cls):
            continue
        described = comments(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = described.get(f.name, "")
            lines.append((f"  {section.name}.{f.name}={default}".ljust(34) + f"  {text}").rstrip())
    return lines


def help_config(schema) -> dict:
    """A hydra/help config: header, the groups' choices, the fields, and the composed config."""
    fields = "\n".join(field_lines(schema))
    template = "\n".join([
        "${hydra.help.header}",
        "== Config groups (group=option) ==",
        "$APP_CONFIG_GROUPS",
        "",
        "== Fields (key=value; the schema's defaults, which the groups and experiments change) ==",
        fields,
        "  attn.<option>, data.<key>  backend options and data settings: see conf/attn/*.yaml, conf/data/*.yaml",
        "",
        "== This command's config ==",
        "$CONFIG",
        "${hydra.help.footer}",
    ])
    return {"app_name": "train.py", "header": HEADER, "template": template,
            "footer": "Hydra's own flags: python train.py --hydra-help"}
