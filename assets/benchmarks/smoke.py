"""The smoke task's items, read from the JSONL file beside this module (no network, no datasets cache).

lm-evaluation-harness calls `load` as the task's `custom_dataset` with the task's `dataset_kwargs` and metadata;
a relative `data_files` path of `dataset_path: json` would be read from the working directory instead, hence this.
"""

import json
from pathlib import Path


def load(data_file: str, **_metadata):
    import datasets

    path = Path(__file__).resolve().parent / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
