"""The paper in miniature: CLO vs SFT on a synthetic two-language world, offline, on CPU, in a few minutes.

- `world`      English, an invented target language with an exact translation, tasks with checkable answers
- `base`       the English-centric base model: a few-million-parameter Llama pretrained here, cached
- `experiment` SFT vs CLO at several data sizes and seeds, through `clo.train` and the PEFT engine; table + plot

    python -m clo miniature                 # or: from clo.miniature.experiment import run
"""

from pathlib import Path


def is_miniature(model: str | Path) -> bool:
    """Whether `model` is a folder holding the miniature's base (it carries a miniature.json)."""
    return (Path(model) / "miniature.json").is_file()
