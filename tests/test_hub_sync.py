"""The votes mirror (clo.evaluate.hub_sync): votes cast through the app's services land in the folder the
CommitScheduler commits, with the whitelisted columns only, once each across appends and restarts; the card; and
huggingface_hub's own CommitScheduler committing that folder to a scripted hub on loopback (HF_ENDPOINT), which
also refuses, fails and disappears, each costing one line.

    python -m pytest -q tests/test_hub_sync.py
"""

import json
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import make_adapters
from scripted_hub import ScriptedHub

from clo import CLOError

REPO = "me/clo-votes"


@pytest.fixture
def hubs():
    """Start scripted hubs (tests/scripted_hub.py): hubs(refuse=401) -> one serving in a thread, stopped after the
    test; `refuse` answers every request with that status, `refuse_commits` only the commits."""
    started = []

    def start(refuse: int | None = None, refuse_commits: int | None = None) -> ScriptedHub:
        server = ScriptedHub.start()
        server.refuse, server.refuse_commits = refuse, refuse_commits
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def online(monkeypatch):
    """HF_TOKEN set and huggingface_hub's offline switch off (it is read once, at import), whatever the run's."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")


def shard_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((folder / "data").glob("*.jsonl"))
            for line in p.read_text(encoding="utf-8").splitlines()]


def wait_for(check, timeout: float = 30.0):
    deadline = time.time() + timeout
    while not check() and time.time() < deadline:
        time.sleep(0.05)
    assert check()


def visitor(session: str, address: str):
    """What a gr.Request gives the arena: the session hash and the client's address."""
    return SimpleNamespace(session_hash=session, client=SimpleNamespace(host=address))


# ---- the local half, through the app's services ----

def test_votes_through_the_app_reach_the_folder_and_the_commit_once_each(tiny_model, project, hubs, online,
                                                                         monkeypatch, capfd):
    from huggingface_hub import CommitScheduler

    from clo.app.context import Services
    from clo.app.settings import Settings
    from clo.evaluate import arena
    from clo.evaluate.hub_sync import EXPORTED, FIELDS
    from clo.engines.base import find_adapters
    from clo.engines.peft_engine import PeftEngine

    server = hubs()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    make_adapters(tiny_model, project / "adapters")
    engine = PeftEngine(str(tiny_model), find_adapters(project / "adapters"))  # shared by both starts
    def settings():  # every_minutes=60: no scheduled commit during the test, only the first and the last
        return Settings(model=str(tiny_model), engine="peft", adapters_dir="adapters", db="votes.db",
                        votes_repo=REPO, votes_every_minutes=60)
    folder = project / "votes-mirror" / "me--clo-votes"
    people = [visitor("raw-session-alpha", "203.0.113.77"), visitor("raw-session-beta", "198.51.100.23")]

    def vote(services, who, outcome):
        b = arena.start_battle(services, who, "서울에서 가 볼 만한 곳은?", "ko")
        return arena.cast_vote(services, who, b["battle_id"], outcome)["battle_id"]

    try:
        services = Services(settings(), engine=engine)
        first = server.wait_commits(1)[0]  # the scheduler's first commit, at once: the card, nothing else yet
        assert list(first) == ["README.md"] and first["README.md"] == (folder / "README.md").read_bytes()
        # ours makes it private when new; the scheduler's own create_repo (exist_ok) follows, a dataset too
        assert server.created[0] == {"name": "clo-votes", "organization": "me", "visibility": "private",
                                     "type": "dataset"}
        assert [c["type"] for c in server.created] == ["dataset", "dataset"]
        assert isinstance(services.votes_mirror.scheduler, CommitScheduler)

        battles = [vote(services, people[0], "a"), vote(services, people[1], "tie")]
        wait_for(lambda: len(shard_rows(folder)) == 2)  # the writer thread, after the votes' replies
        services.votes_mirror.poke(battles[0])  # a repeated append of a vote already written adds nothing
        assert services.votes_mirror.flush() == 0
        store_votes = services.store.votes()
        services.close()  # the last commit: the shard
        last = server.wait_commits(2)[-1]
        shards = sorted((folder / "data").glob("*.jsonl"))
        assert len(shards) == 1 and list(last) == [f"data/{shards[0].name}"]
        assert last[f"data/{shards[0].name}"] == shards[0].read_bytes()

        rows = shard_rows(folder)
        assert [r["battle_id"] for r in rows] == battles and [r["id"] for r in rows] == list(store_votes["id"])
        assert all(list(r) == list(EXPORTED) for r in rows)  # the whitelist, in its order, nothing more
        assert [r["outcome"] for r in rows] == ["a", "tie"] and all(r["blind"] is True for r in rows)
        text = "".join(p.read_text(encoding="utf-8") for p in shards)
        secrets = [p.session_hash for p in people] + [p.client.host for p in people] + list(
            store_votes["voter_address"])  # raw strings, and the address's keyed hash too
        assert not [s for s in secrets if s in text]
        assert [r["voter"] for r in rows] == list(store_votes["voter"])  # the session's keyed hash only

        # a restart: a new replica writes its own shard, the old votes are not appended again, the card on the hub
        # (committed before) is left to its owner
        before = len(server.commits)
        services = Services(settings(), engine=engine)
        wait_for(lambda: services.votes_mirror.scheduler is not None)
        battles.append(vote(services, people[0], "b"))
        services.close()
        assert len(server.commits) > before and not [c for c in server.commits[before:] if "README.md" in c]
        rows = shard_rows(folder)  # two shards, in the order of their (random) replica ids
        assert sorted(r["battle_id"] for r in rows) == sorted(battles) and len({r["id"] for r in rows}) == 3
        shards = sorted((folder / "data").glob("*.jsonl"))
        assert len(shards) == 2  # what the hub holds is what the folder holds
        assert server.files(REPO) == {"README.md": first["README.md"], **{f"data/{p.name}": p.read_bytes() for p in shards}}
    finally:
        engine.close()

    # the card: front matter the hub accepts, one line per field, how to load it, a licence to fill in
    readme = (folder / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", readme, re.S).group(1))
    assert meta["configs"][0]["data_files"][0]["path"] == "data/*.jsonl"
    assert f'load_dataset("{REPO}", split="train")' in readme and "Licence:" in readme
    assert all(f"- `{name}`: " in readme for name in FIELDS)
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err
    assert f"votes mirrored to {server.url}/datasets/{REPO} every 60 minutes" in out.out


def test_the_folder_loads_as_the_card_says(tmp_path, store, online):
    """datasets.load_dataset reads the folder the scheduler commits by its card's configs: the votes, one row each."""
    import datasets

    from clo.evaluate.hub_sync import EXPORTED, HubSync

    mirror = HubSync(store, tmp_path / "mirror", REPO)  # the local half alone: never connected
    for outcome in ("a", "both_bad"):
        b = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "clo-ko": "y"})
        store.vote(b.id, outcome, voter="v")
        mirror.poke(b.id)
    mirror.close()
    votes = datasets.load_dataset(str(tmp_path / "mirror"), split="train", cache_dir=str(tmp_path / "cache"))
    assert votes.num_rows == 2 and sorted(votes["outcome"]) == ["a", "both_bad"]
    assert votes.column_names == list(EXPORTED)


# ---- off, refused, unreachable: one line each, the votes kept ----

def test_no_token_is_one_line_and_no_mirror(store, monkeypatch, tmp_path):
    from clo.app.context import votes_mirror
    from clo.app.settings import Settings

    monkeypatch.delenv("HF_TOKEN", raising=False)
    lines = []
    assert votes_mirror(Settings(db=str(tmp_path / "votes.db")), store, log=lines.append) is None and lines == []
    assert votes_mirror(Settings(db=str(tmp_path / "votes.db"), votes_repo=REPO), store, log=lines.append) is None
    assert lines == [f"[clo] votes mirror to {REPO} is off: HF_TOKEN is not set (a token that may write to it; on a "
                     "Space, a secret)"]
    assert not (tmp_path / "votes-mirror").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(CLOError, match="must be a dataset repo as owner/name, got 'clo-votes'"):
        votes_mirror(Settings(votes_repo="clo-votes"), store, log=lines.append)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["unreachable", "refused", "offline"])
def test_a_hub_that_cannot_be_used_is_one_line_and_the_votes_wait_in_the_folder(case, store, hubs, online, monkeypatch,
                                                                                tmp_path, capfd):
    from huggingface_hub import constants

    from clo.app.context import votes_mirror
    from clo.app.settings import Settings

    endpoint = f"http://127.0.0.1:{closed_port()}" if case == "unreachable" else hubs(refuse=401).url
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    if case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    lines = []
    mirror = votes_mirror(Settings(db=str(tmp_path / "votes.db"), votes_repo=REPO), store, log=lines.append)
    wait_for(lambda: lines)
    reason = {"unreachable": "the hub cannot be reached (ConnectError: ",
              "refused": "the hub refused the token (HTTP 401)", "offline": "offline mode is on (HF_HUB_OFFLINE=1)"}
    assert len(lines) == 1 and lines[0].startswith(f"[clo] votes mirror to {REPO} is not committing: {reason[case]}")
    assert lines[0].endswith(f"the votes are kept in {tmp_path / 'votes-mirror' / 'me--clo-votes'} and a later start "
                             "commits them")
    b = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "clo-ko": "y"})
    store.vote(b.id, "a", voter="v")
    mirror.poke(b.id)
    started = time.perf_counter()
    mirror.close()
    assert time.perf_counter() - started < 5  # no scheduler: nothing to wait for
    assert [r["battle_id"] for r in shard_rows(mirror.folder)] == [b.id] and mirror.scheduler is None
    assert len(lines) == 1
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err


def test_a_refused_commit_is_one_line_and_the_next_commits_it(store, hubs, online, monkeypatch, tmp_path, capfd):
    """The repo exists but the token may not write: each failed commit is one line, nothing raised, the shard kept;
    once commits are accepted the next one carries it (huggingface_hub's own scheduler doing the commits)."""
    from clo.evaluate.hub_sync import HubSync

    server = hubs(refuse_commits=403)
    lines = []
    mirror = HubSync(store, tmp_path / "mirror", REPO, log=lines.append)
    mirror.connect("hf_test_token", every_minutes=60, endpoint=server.url)
    wait_for(lambda: mirror.scheduler is not None and lines)  # the first commit (the card) was refused
    assert lines[-1] == (f"[clo] votes mirror: a commit to {REPO} failed: the hub refused the token (HTTP 403); the "
                         f"votes stay in {tmp_path / 'mirror'} and the next commit tries again")
    b = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "clo-ko": "y"})
    store.vote(b.id, "b", voter="v")
    mirror.poke(b.id)
    wait_for(lambda: len(shard_rows(mirror.folder)) == 1)
    server.refuse_commits = None
    mirror.close()
    (commit,) = server.wait_commits(1)
    assert set(commit) == {"README.md", f"data/{mirror.path().name}"}
    assert json.loads(commit[f"data/{mirror.path().name}"])["battle_id"] == b.id
    assert len([line for line in lines if "failed" in line]) == 1
    out = capfd.readouterr()
    assert "Traceback" not in out.out + out.err and "Error while pushing" not in out.out + out.err


def test_rows_cut_by_a_crash_do_not_stop_a_restart(store, tmp_path):
    """A shard whose last row a crash cut short: the ids before it still count, so they are not appended again."""
    from clo.evaluate.hub_sync import HubSync

    b = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "clo-ko": "y"})
    store.vote(b.id, "a", voter="v")
    mirror = HubSync(store, tmp_path / "m", REPO, replica="one")
    mirror.poke(b.id)
    mirror.close()
    with mirror.path().open("a", encoding="utf-8") as fh:
        fh.write('{"id": "cut-sh')
    again = HubSync(store, tmp_path / "m", REPO, replica="two")
    again.poke(b.id)
    assert again.flush() == 0
    again.close()
    assert not (tmp_path / "m" / "data" / "votes-two-00000.jsonl").exists()
