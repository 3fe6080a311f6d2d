"""Two app replicas on one PostgreSQL store and one `vllm serve`: every vote the apps acknowledge is stored once.

The deployment of docs/deploy.md ("Several replicas, one server"), on one machine: the run's `vllm serve` of the tiny
model (conftest's `vllm_server`), two `python app.py` processes with `CLO_ENGINE=remote CLO_URL=<server>` and
`CLO_DB=<one new PostgreSQL database>`, started at the same moment as a deploy starts its replicas. The server is
given the SFT and CLO adapters at run time (POST /v1/load_lora_adapter, what `--lora-modules sft-ko=... clo-ko=...`
does at its start; the fixture's own adapter, alpha, is of no method, so it fills no Arena slot), and the remote
engine lists them from /v1/models, so each replica's Arena draws from base, sft-ko and clo-ko as a single app does.
"""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
from conftest import launch_app, make_adapters

CLIENTS = 3  # concurrent visitors per replica
ROUNDS = 2  # battles each of them draws: its votes sent to both replicas at once, then to the other alone
OUTCOMES = ["a", "b", "tie", "both_bad"]


def test_two_replicas_on_one_store_and_one_server_store_each_acknowledged_vote_once(
        vllm_server, postgres, tiny_model, tmp_path):
    """Three visitors per replica, at once, each draw two battles on their replica. On each, another session's vote
    is refused on the other replica first (a battle belongs to the session that drew it, on every replica). On the
    first, the visitor's own vote is sent four times at once, twice to each replica (double clicks that a load
    balancer spread over both); on the second, it reaches the other replica alone. Then it is replayed. Exactly one
    vote per battle is acknowledged (the lone one on the other replica is), the store holds exactly the acknowledged
    votes, each once with the outcome its reply named, and both replicas' Leaderboards count the same votes."""
    from gradio_client import Client

    served = make_adapters(tiny_model, tmp_path / "served")
    for name in ("sft-ko", "clo-ko"):  # the vllm_server fixture unloads them after the test
        httpx.post(f"{vllm_server}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(served / name)},
                   timeout=60).raise_for_status()
    # short answers: the test is about the votes
    env = {"CLO_ENGINE": "remote", "CLO_URL": vllm_server, "CLO_DB": postgres, "CLO_MAX_TOKENS": "16"}
    works = [tmp_path / "replica-a", tmp_path / "replica-b"]
    for work in works:
        work.mkdir()
    # started together on the new database, as a deploy starts its replicas (their migrations seldom overlap here:
    # tests/test_votes.py opens one database from four stores at the same instant)
    with ThreadPoolExecutor(2) as pool:
        starts = [pool.submit(launch_app, tiny_model, work, **env) for work in works]
    apps = [start.result() for start in starts if not start.exception()]
    try:
        for start in starts:
            start.result()  # a replica that did not start fails the test here, the other stopped below
        urls = [url for _, url in apps]
        for work in works:
            assert "remote engine" in (work / "app.log").read_text()
        acknowledged, refused, drawn, unexpected = {}, [], {}, []
        lock = threading.Lock()

        def visitor(i: int) -> None:
            here, there = urls[i % 2], urls[1 - i % 2]
            me, twin, stranger = Client(here, verbose=False), Client(there, verbose=False), Client(there, verbose=False)
            twin.session_hash = me.session_hash  # the same session (its page) reaching the other replica
            rng = random.Random(i)
            for round_ in range(ROUNDS):
                battle_id = me.predict("", "ko", api_name="/battle")["battle_id"]
                outcomes = rng.sample(OUTCOMES, 4)
                calls = [("stranger", outcomes[0], vote(stranger, battle_id, outcomes[0]))]
                if round_ % 2 == 0:  # double clicks that a load balancer spread over both replicas: 4 votes at once
                    burst = [("here", me, outcomes[0]), ("there", twin, outcomes[1]), ("here", me, outcomes[2]),
                             ("there", twin, outcomes[3])]
                    jobs = [client.submit(battle_id, outcome, api_name="/vote") for _, client, outcome in burst]
                    calls += [(who, outcome, wait(job)) for (who, _, outcome), job in zip(burst, jobs)]
                else:  # the session's vote reaches the other replica alone; its replay then comes here
                    calls += [("there", outcomes[1], vote(twin, battle_id, outcomes[1]))]
                calls += [("here", outcomes[2], vote(me, battle_id, outcomes[2]))]  # replayed after the replies
                with lock:
                    drawn[battle_id] = round_ % 2
                    for who, outcome, result in calls:
                        if isinstance(result, dict):
                            assert result["battle_id"] == battle_id and result["outcome"] == outcome, result
                            acknowledged.setdefault(battle_id, []).append((who, outcome))
                        elif who == "stranger" and "belongs to another session" in result:
                            refused.append(battle_id)
                        elif who != "stranger" and "already has a vote" in result:
                            pass
                        else:
                            unexpected.append((battle_id, who, result))

        with ThreadPoolExecutor(2 * CLIENTS) as pool:
            list(pool.map(visitor, range(2 * CLIENTS)))

        assert not unexpected, unexpected
        assert len(drawn) == 2 * CLIENTS * ROUNDS
        assert sorted(refused) == sorted(drawn)  # every stranger refused, on the replica that did not draw the battle
        assert sorted(acknowledged) == sorted(drawn)
        assert all(len(v) == 1 for v in acknowledged.values()), acknowledged  # one of those sent at once, never two
        # a vote that reached the other replica alone counted there: the battle is its session's, not its replica's
        assert all(acknowledged[b][0][0] == "there" for b, alone in drawn.items() if alone), acknowledged
        with psycopg.connect(postgres) as conn:
            rows = conn.execute("SELECT battle_id, outcome FROM votes WHERE judge IS NULL").fetchall()
            battles = conn.execute("SELECT COUNT(*) FROM battles").fetchone()[0]
        stored = {}
        for battle_id, outcome in rows:
            stored.setdefault(battle_id, []).append(outcome)
        # none lost, none doubled, each with the outcome its reply named
        assert stored == {b: [outcome for _, outcome in acks] for b, acks in acknowledged.items()}
        assert battles == len(drawn)
        boards = [Client(url, verbose=False).predict("ko", api_name="/leaderboard")["summary"] for url in urls]
        assert boards[0] == boards[1] and boards[0][0]["stored"] == len(acknowledged), boards
        for work in works:
            assert "Traceback" not in (work / "app.log").read_text()
    finally:
        for proc, _ in apps:
            proc.terminate()
        for proc, _ in apps:
            proc.wait(timeout=30)


def vote(client, battle_id: str, outcome: str) -> dict | str:
    """The reveal, or the refusal's message."""
    try:
        return client.predict(battle_id, outcome, api_name="/vote")
    except Exception as e:  # noqa: BLE001 (gradio_client's AppError carries the app's sentence)
        return str(e)


def wait(job) -> dict | str:
    try:
        return job.result()
    except Exception as e:  # noqa: BLE001
        return str(e)
