"""Share a trained adapter: a PEFT model repo on the Hugging Face hub, with a model card made from its manifest.

    python -m clo push adapters/clo-ko --repo me/qwen2.5-3b-clo-ko [--private]     # one commit: all files or none
    python -m clo push adapters/clo-ko --repo me/qwen2.5-3b-clo-ko --dry-run       # the repo's files in push/, no network
    python -m clo train --config recipes/demo.yaml --push-to-hub me/qwen2.5-0.5b-{method}-{lang}   # each adapter, once saved

The repo holds the adapter's weights (safetensors) and config, with `base_model_name_or_path` set to the base's hub
id (a local folder means nothing to anyone else: a base known only by its folder needs `--base-model OWNER/NAME`);
the manifest, metrics, recipe and training log as saved; and README.md, the card: metadata (`base_model`,
`library_name: peft`, languages, the base's licence where its card is readable here, tags), the recipe, the data
and its hashes, the training curve in a few numbers, what `python -m clo replicate` measured when the adapter lies
in a replicate run's folder, the judge's results given with `--judge-json`, and how to load it with PEFT, vLLM and
this app. Missing token, unreachable hub, refused write: one sentence, nothing pushed.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from pathlib import Path

from clo import CLOError
from clo.files import new_folder
from clo.hub import HUB_ID, _endpoint, _reason, check_repo_id, hub_online

PUSHED = ("adapter_config.json", "adapter_model.safetensors", "manifest.json", "metrics.json", "recipe.yaml",
          "train_log.jsonl")  # README.md, the card, is written; everything else in the folder stays here
TAGS = ("peft", "lora", "cross-lingual-optimization", "clo")
METHODS = {"clo": "CLO: λ·L_SFT + (1−λ)·L_CL, L_CL being DPO on cross-lingual pairs in both directions (π_ref the base)",
           "sft": "SFT: next-token loss on the target-language answers", "dpo": "L_CL alone (cross-lingual DPO)",
           "orpo": "ORPO on the cross-lingual pairs"}
PAPER = "https://arxiv.org/abs/2505.14297"


REPO_SAYS = "--repo must be a hub repo id OWNER/NAME (letters, digits, . _ -), got {!r}"  # clo.hub.check_repo_id
TARGET_SAYS = "--push-to-hub must name a hub repo id OWNER/NAME (letters, digits, . _ -), got {!r}"


def push_targets(template: str, methods: list[str], lang: str) -> dict[str, str]:
    """The repo each method's adapter goes to: `template` with {method} and {lang} filled in; several methods need
    {method} in it (one repo per adapter)."""
    if len(methods) > 1 and "{method}" not in template:
        raise CLOError(f"--push-to-hub {template} would push {len(methods)} adapters ({', '.join(methods)}) to one repo: "
                       "put {method} in the name, e.g. me/qwen2.5-0.5b-{method}-{lang}")
    try:
        return {m: check_repo_id(template.format(method=m, lang=lang), TARGET_SAYS) for m in methods}
    except (KeyError, IndexError, ValueError):
        raise CLOError(f"--push-to-hub {template!r}: only {{method}} and {{lang}} can be filled in") from None


def check_can_push(base: str, base_model: str | None = None) -> None:
    """Before hours of training: the base has a hub id, a token is there and the hub answers (one sentence if not)."""
    from huggingface_hub import get_token

    base_hub_id(Path(base), {"base_model": {"name_or_path": base}}, base_model)
    if not get_token():
        raise CLOError("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (nothing was "
                       "trained)")
    if not hub_online():
        raise CLOError("--push-to-hub: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set), so nothing was "
                       "trained; train without it and run `python -m clo push` later")


def push(adapter_dir: str | Path, repo: str, private: bool = False, dry_run: bool = False,
         base_model: str | None = None, judge_json: list[str] = (), out: str | Path = "push") -> str:
    """Push the adapter in `adapter_dir` to the model repo `repo` in one commit (create it if needed); with
    `dry_run`, write the repo's files in a new folder under `out` instead. Returns the commit's URL or the folder."""
    from clo.engines.base import read_adapter  # upward, lazily: the adapter folder as every engine reads it

    repo = check_repo_id(repo, REPO_SAYS)
    adapter = read_adapter(adapter_dir)  # a complete, readable adapter (safetensors weights), or one sentence
    folder = Path(adapter_dir)
    base = base_hub_id(folder, _read_json(folder / "manifest.json"), base_model)
    card = model_card(folder, repo, base, judge_json)  # every check before anything is written or sent
    if dry_run:
        staged = new_folder(out, repo.replace("/", "--"))
        _stage(folder, staged, base, card)
        files = sorted(p.name for p in staged.iterdir())
        print(f"[clo] dry run: {staged} holds what would be pushed to {repo} ({', '.join(files)}); nothing was sent",
              flush=True)
        return str(staged)
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise CLOError("no Hugging Face token: run `hf auth login` or set HF_TOKEN to a token that may write to "
                       f"{repo.split('/')[0]}; nothing was pushed (--dry-run shows what would be)")
    if not hub_online():
        raise CLOError("the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set); nothing was pushed; push again "
                       "when it answers (--dry-run writes the repo's files locally meanwhile)")
    api = HfApi(endpoint=_endpoint(), token=token)
    with tempfile.TemporaryDirectory(prefix="clo-push-") as tmp:
        _stage(folder, Path(tmp), base, card)
        try:
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=tmp, repo_id=repo, repo_type="model",
                                       commit_message=f"Upload {adapter.name} ({adapter.method or 'adapter'}, "
                                                      "python -m clo push)")
        except Exception as e:  # noqa: BLE001 (refused, unreachable, a bad name: one sentence; a commit is all or nothing)
            raise CLOError(_push_failure(repo, e)) from None
    oid = getattr(commit, "oid", None) or "?"
    print(f"[clo] pushed {folder} to {repo} at commit {oid[:12]}: serve it with --adapters {repo}@{oid}", flush=True)
    return str(getattr(commit, "commit_url", None) or repo)


def _push_failure(repo: str, e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 401:
        return "the hub refused the token (HTTP 401): log in again with `hf auth login`; nothing was pushed"
    if status == 403:
        return (f"this token may not write to {repo} (HTTP 403): use a token with write access to "
                f"{repo.split('/')[0]}; nothing was pushed")
    return f"pushing to {repo} failed, nothing was pushed: {_reason(e)}"


def _stage(folder: Path, dest: Path, base: str, card: str) -> None:
    """The repo's files in `dest`: the adapter's own (its config naming the base's hub id `base`) and README.md."""
    for name in PUSHED:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base  # what AutoPeftModelForCausalLM loads on another machine
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (dest / "README.md").write_text(card, encoding="utf-8")


# ---- the model card ----

def _read_json(file: Path) -> dict:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def base_hub_id(folder: Path, manifest: dict, given: str | None) -> str:
    """The base model's hub id: `given`, the manifest's base when it is a hub id, or the hub id of the offline
    model it names (clo.models.table); else one sentence asking for --base-model."""
    if given:
        if not HUB_ID.match(given) or "/" not in given:
            raise CLOError(f"--base-model must be a hub id OWNER/NAME, got {given!r}")
        return given
    base = manifest.get("base_model") or {}
    name = base.get("name_or_path") if isinstance(base, dict) else base
    if not name:
        name = _read_json(folder / "adapter_config.json").get("base_model_name_or_path") or ""
    if isinstance(name, str) and HUB_ID.match(name) and "/" in name and not Path(name).expanduser().exists():
        return name
    from clo.models.table import entry_for

    entry = entry_for(name) if isinstance(name, str) and name else None
    if getattr(entry, "hub_id", None):
        return entry.hub_id
    raise CLOError(f"{folder} was trained on the local folder {name or '(unnamed)'}, which has no hub id: pass "
                   "--base-model OWNER/NAME naming the same model on the hub")


def base_license(base: str) -> str | None:
    """The base model's licence from its card in the local hub cache (no request is sent), else None."""
    try:
        from huggingface_hub import ModelCard, try_to_load_from_cache

        cached = try_to_load_from_cache(base, "README.md")
        if isinstance(cached, str):
            return ModelCard.load(cached).data.license
    except Exception:  # noqa: BLE001 (an unreadable card: the licence is then said to be the base's, unnamed)
        return None
    return None


def curve(folder: Path) -> str | None:
    """The training curve in a few numbers: steps, loss first → last (min), and each logged loss term."""
    rows = []
    try:
        for line in (folder / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if isinstance(row, dict) and isinstance(row.get("loss"), (int, float)):
                rows.append(row)
    except (OSError, ValueError):
        return None
    if not rows:
        return None
    losses = [r["loss"] for r in rows]
    parts = [f"{len(rows)} logged steps; loss {losses[0]:.3f} → {losses[-1]:.3f} (lowest {min(losses):.3f})"]
    for term in ("l_sft", "l_cl", "tgt/accuracy", "en/accuracy"):
        seen = [r[term] for r in rows if isinstance(r.get(term), (int, float))]
        if seen:
            parts.append(f"{term} {seen[0]:.3f} → {seen[-1]:.3f}")
    return "; ".join(parts)


def replication_rows(folder: Path, name: str) -> list[dict]:
    """What `python -m clo replicate` measured for this adapter (and the base) when it lies in a run's folder."""
    results = folder.parent.parent / "results.csv"
    if folder.parent.name != "adapters" or not results.is_file():
        return []
    with results.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if r.get("variant") in (name, "base")]


def _length(t) -> str:
    if t.max_steps > 0:
        return f"{t.max_steps} step{'s' if t.max_steps != 1 else ''}"
    return f"{t.epochs:g} epoch{'s' if t.epochs != 1 else ''}"


def _pct(x) -> str:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(value) else f"{100 * value:.0f}%"


def judge_lines(files: list[str]) -> list[str]:
    """One line per language of each `python -m clo judge --json` result file."""
    lines = []
    for f in files:
        report = _read_json(Path(f))
        if not report.get("languages"):
            raise CLOError(f"{f} is not the output of `python -m clo judge --json` (no \"languages\" object)")
        for lang, r in report["languages"].items():
            rate = "–" if r.get("win_rate") is None else (f"{100 * r['win_rate']:.1f}% "
                                                          f"[{100 * r['lower']:.1f}, {100 * r['upper']:.1f}]")
            lines.append(f"| {report.get('first')} vs {report.get('second')} | {lang} | {rate} | {r.get('n')} "
                         f"({r.get('wins')} W / {r.get('ties')} T / {r.get('losses')} L) | {report.get('judge')} |")
    return lines


def model_card(folder: Path, repo: str, base: str, judge_json: list[str] = ()) -> str:
    """README.md of the repo: metadata, then what the adapter is, how it was made and measured, and how to load it.
    `base`: the base model's hub id (base_hub_id)."""
    from huggingface_hub import ModelCardData

    from clo.engines.vllm_engine import lora_rank_slot  # upward, lazily: the serving side says which ranks vLLM takes

    from clo.config import Recipe

    manifest, metrics = _read_json(folder / "manifest.json"), _read_json(folder / "metrics.json")
    rank = _read_json(folder / "adapter_config.json").get("r") or 16
    lang, method = manifest.get("target_lang"), manifest.get("method")
    name = repo.split("/", 1)[1]
    data = ModelCardData(base_model=base, library_name="peft", license=base_license(base), pipeline_tag="text-generation",
                         language=[lang, "en"] if lang and lang != "en" else None,
                         tags=[*TAGS, *([method] if method else []), *([f"target-lang-{lang}"] if lang else [])])
    out = ["---", data.to_yaml(), "---", "",
           f"# {name}", "",
           f"A LoRA adapter for [{base}](https://huggingface.co/{base}) trained with "
           f"{METHODS.get(method, method or 'an unrecorded method')} — Cross-Lingual Optimization (Lee et al., ACL 2025, "
           f"[arXiv 2505.14297]({PAPER})) adapts an English-centric chat model to a target language"
           f"{f' (`{lang}`)' if lang else ''} from English instruction data and a translation model, keeping its "
           "English. Made with the CLO demo app (`python -m clo push`).", ""]
    recorded = manifest.get("base_model") if isinstance(manifest.get("base_model"), dict) else {}
    if recorded.get("name_or_path") and recorded["name_or_path"] != base:
        out += [f"Trained on `{recorded['name_or_path']}`, a local copy of the base (fingerprint "
                f"`{recorded.get('fingerprint') or manifest.get('trained_on_fingerprint') or 'not recorded'}`); "
                f"`--base-model` or the offline models' table named it `{base}`. A copy converted from another format "
                "(e.g. dequantised from a GGUF) is close to the hub's weights, not equal to them.", ""]
    if (folder / "recipe.yaml").is_file():
        try:
            r = Recipe.load(folder / "recipe.yaml")
        except CLOError:
            r = None
        if r is not None:
            t, m, lo = r.training, r.method, r.lora
            out += ["## Recipe", "",
                    f"- method `{method}`: λ = {m.lam}, β = {m.beta}" + (f", ORPO weight {m.orpo_lambda}" if method == "orpo" else ""),
                    f"- LoRA r {lo.r}, α {lo.alpha}, dropout {lo.dropout}, on {', '.join(lo.target_modules)}",
                    f"- learning rate {t.learning_rate:g} ({t.lr_scheduler}), batch {t.batch_size} × accumulation "
                    f"{t.grad_accum}, {_length(t)}, "
                    f"seed {t.seed}, longest sequence {t.max_length} tokens",
                    f"- trained as {manifest.get('mode', '?')}; the whole recipe is `recipe.yaml`", ""]
    d = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    if d:
        translator = ("translations given in the file" if d.get("translator") == "file" else
                      f"translated by {d.get('translator', '?')}"
                      + (f" ({d['translator_model']})" if d.get("translator_model") else ""))
        out += ["## Data", "",
                f"- {d.get('pairs', '?')} English pairs from `{d.get('source', '?')}` into "
                f"`{d.get('target_lang', lang)}`, {translator}",
                f"- file sha256 `{d.get('sha256') or '–'}`, pairs sha256 `{d.get('rows_sha256') or '–'}`, seed {d.get('seed', '–')}",
                ""]
    shape = curve(folder)
    if metrics or shape:
        final = metrics.get("final") if isinstance(metrics.get("final"), dict) else {}
        terms = ", ".join(f"{k} {v:.3f}" for k, v in final.items() if isinstance(v, (int, float))
                          and k in ("loss", "l_sft", "l_cl", "tgt/margin", "en/margin", "tgt/accuracy", "en/accuracy"))
        out += ["## Training", ""]
        if metrics:
            out.append(f"- {metrics.get('steps', '?')} steps, {metrics.get('pairs_seen', '?')} pairs seen, "
                       f"{metrics.get('runtime_s', '?')} s" + (f"; at the end: {terms}" if terms else ""))
        if shape:
            out.append(f"- the curve (`train_log.jsonl`): {shape}")
        out.append("")
    rows = replication_rows(folder, folder.name)
    judged = judge_lines(list(judge_json))
    out += ["## Evaluation", ""]
    if rows:
        out += ["Measured by `python -m clo replicate` in the run this adapter came from (the share of judged answers "
                "in the asked language; facts: short English questions answered right):", "",
                "| variant | target language | English | English facts |", "|---|---|---|---|"]
        out += [f"| {r['variant']} | {_pct(r.get('target_fidelity'))} | {_pct(r.get('english_fidelity'))} | "
                f"{_pct(r.get('facts_accuracy'))} |" for r in rows]
        out.append("")
    if judged:
        out += ["An LLM judge's pairwise win rate (`python -m clo judge`, both orders; 95% interval):", "",
                "| pair | language | win rate | n | judge |", "|---|---|---|---|---|", *judged, ""]
    if not rows and not judged:
        out += ["None recorded with this adapter: measure it with `python -m clo judge` (and pass `--judge-json`) or "
                "vote on it in the app's Arena.", ""]
    variant = name
    out += ["## Use", "",
            "With PEFT:", "", "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, "{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")', "```", "",
            "With vLLM (the adapter as a served model of its own):", "", "```bash",
            f"vllm serve {base} --enable-lora --lora-modules {variant}={repo} --max-lora-rank {lora_rank_slot(rank)}",
            "```", "",
            "In the CLO demo app, beside the base and other adapters (a revision is pinned with `@commit`):", "",
            "```bash", f"python app.py --model {base} --adapters {repo}", "```", "",
            "## Licence", "",
            f"The base model's licence applies{f' ({data.license})' if data.license else ': see its card'}.", ""]
    return "\n".join(out)
