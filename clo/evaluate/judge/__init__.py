"""An LLM as judge: AlpacaEval's pairwise protocol over any OpenAI-compatible endpoint, its verdicts stored as votes.

    python -m clo judge --adapters clo-ko,sft-ko --lang ko --prompts sample \\
        --judge-url http://127.0.0.1:8001 --judge-model Qwen/Qwen2.5-72B-Instruct --limit 50

answers the prompts (in the target language, and their English versions) with both variants through the project's
engines, asks the judge which answer of each pair is better (in both orders: a disagreement is a tie), and prints the
win rate of the first variant against the second with a 95% bootstrap interval, per language, the length-controlled
win rate and how often the two orders agreed. In the app the same judge
judges the people's blind battles, in the background after each vote or on an admin's word.

    protocol.py    what the judge is asked (PAIRWISE, `clo-pairwise-3`: the two answers as A and B, escaped) and how
                   its reply is read (CONSTRAINTS, `--judge-constraint`: choice, logprobs, none, auto)
    client.py      JudgeClient: the OpenAI-compatible endpoint, its health check, timeout and retries
    run.py         judge_items over many pairs (each asked in both orders, verdicts stored as judge votes, unreadable
                   replies kept and asked again on a schedule), battle_items, the judge's numbers
    prompts.py     the prompts a run answers: the sample, its held-out fifth, a JSONL file, a hub prompt set
    cli.py         `python -m clo judge`
    background.py  Judging: the app's background judge and the admin's judging job

Import from the module that holds a name (`from clo.evaluate.judge.client import JudgeClient`); this package
re-exports nothing.
"""
