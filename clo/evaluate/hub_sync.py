"""HubSync: mirror the vote store's votes to a Hugging Face dataset repo, an append-only JSONL file per replica
(usage in the class's docstring). Nothing in the app calls it yet; tests/test_votes.py does.
"""

from __future__ import annotations

import uuid
from pathlib import Path


class HubSync:
    """Mirror the votes to a Hugging Face dataset repo: an append-only JSONL file per replica, committed every
    `every` minutes by huggingface_hub's CommitScheduler. Off unless a repo id and a token are given.

        sync = HubSync.from_settings(repo_id="me/clo-votes", token=os.environ.get("HF_TOKEN"), folder="data/sync")
        sync.append(store.votes())    # new rows only; call after votes, or periodically
    """

    def __init__(self, folder: str | Path, replica: str, scheduler=None):
        self.folder, self.replica, self.scheduler = Path(folder), replica, scheduler
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file = self.folder / f"votes-{replica}.jsonl"
        self.seen: set[str] = set()
        if self.file.exists():
            import json

            self.seen = {json.loads(line)["id"] for line in self.file.read_text(encoding="utf-8").splitlines() if line}

    @classmethod
    def from_settings(cls, repo_id: str | None, token: str | None, folder: str | Path, every_minutes: float = 5,
                      replica: str | None = None) -> "HubSync | None":
        if not repo_id or not token:
            return None
        from huggingface_hub import CommitScheduler

        scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=folder, every=every_minutes,
                                    token=token, path_in_repo="votes", private=True)
        return cls(folder, replica or uuid.uuid4().hex[:8], scheduler)

    def append(self, votes) -> int:
        """Append the votes not yet in this replica's file; returns how many were added."""
        import contextlib

        fresh = votes[~votes["id"].isin(self.seen)]
        if fresh.empty:
            return 0
        lock = self.scheduler.lock if self.scheduler is not None else contextlib.nullcontext()
        with lock, self.file.open("a", encoding="utf-8") as fh:
            fh.write(fresh.to_json(orient="records", lines=True, force_ascii=False))
        self.seen |= set(fresh["id"])
        return len(fresh)
