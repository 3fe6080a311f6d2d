"""Typed configuration: one dataclass per concern, grouped in a `Recipe`.

The same classes feed the YAML recipes in `recipes/`, the command line (clo.cli: `python -m clo train --help`
lists every field as `--section.field`, plus the short aliases such as `--lang`) and the app's forms. Each field is
made with `option(default, help, ...)`, which the experiment configs and the app's settings use too.

    recipe = Recipe.load("recipes/demo.yaml", overrides={"data.target_lang": "sw"})
    recipe.save("run.yaml")
"""

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clo import CLOError
from clo.files import atomic_write, read_text
from clo.languages import lang_code
from clo.models.table import canonical

METHODS = ("clo", "sft", "dpo", "orpo")


def option(default: Any = dataclasses.MISSING, help: str = "", cli: str | bool | None = None, choices: tuple | None = None,
           label: str | None = None, normalize: Any = None, env: str | None = None, from_env: Any = None,
           positive: bool = False, **kw) -> Any:
    """A dataclass field carrying its command-line option (clo.cli turns such fields into options and back): its help
    text; `cli`, its flag (a recipe field's short alias; False: none, the environment variable alone); the allowed
    values; a form label; `normalize`, mapping an accepted spelling to the canonical value (kor, KO, ko-KR → ko);
    `env`, the CLO_* environment variable read when the flag is not given (`from_env(raw)` reads it when the type's
    reading does not fit); `positive`, a number above 0. A list default is copied for each instance."""
    meta = {"help": help, "cli": cli, "choices": choices, "label": label, "normalize": normalize, "env": env,
            "from_env": from_env, "positive": positive}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelConfig:
    name_or_path: str = option("Qwen/Qwen2.5-0.5B-Instruct", "Base chat model π_ref: a hub id, a local folder, or a shorthand "
                           "made into a folder on first use (python -m clo models list).", cli="--model", label="Base model π_ref",
                           normalize=canonical)
    revision: str | None = option(None, "Hub revision (branch, tag or commit) of the base model.")
    load_in_4bit: str = option(
        "auto",
        "QLoRA: load the base in 4-bit nf4. auto = when CUDA and bitsandbytes are present; true forces it (CPU works, slowly).",
        choices=("auto", "true", "false"),
        label="4-bit base (QLoRA)",
    )
    trust_remote_code: bool = option(False, "Run modelling code shipped with the model repository. Off unless you trust it.")


@dataclass
class LoraConfig:
    r: int = option(16, "LoRA rank.", cli="--lora-rank", label="LoRA rank r")
    alpha: int = option(32, "LoRA scaling α (the update is scaled by α / r).")
    dropout: float = option(0.05, "Dropout on the LoRA input.")
    target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        "Modules that get LoRA. The paper trains the attention layers only.",
    )


@dataclass
class DataConfig:
    target_lang: str = option("ko", "Target language l (ISO 639-1: ko, zh, de, id, sw, yo, ...; kor, ko-KR, KO mean ko).",
                          cli="--lang", label="Target language l", normalize=lang_code)
    source: str = option(
        "sample",
        "English SFT pairs (x_en, y_en): 'sample' (shipped in assets/), 'miniature' (synthetic tasks with an exact "
        "translation, --lang mini), a local .jsonl/.json/.csv file, or a Hugging Face dataset id (OpenAssistant/oasst1 gets the paper's top-ranked single-turn selection).",
        cli="--data",
        label="English pairs (x_en, y_en)",
    )
    split: str = option("train", "Split of a hub dataset.")
    prompt_field: str = option("prompt_en", "Field holding the English instruction x_en.")
    response_field: str = option("response_en", "Field holding the English answer y_en.")
    target_prompt_field: str = option("prompt_{lang}", "Field holding x_l when the file carries its own translations.")
    target_response_field: str = option("response_{lang}", "Field holding y_l when the file carries its own translations.")
    pairs: int = option(200, "Number of cross-lingual pairs to train on (the paper: 6,400).", cli="--pairs", label="Cross-lingual pairs")
    seed: int = option(42, "Seed of the pair selection.")
    translator: str = option(
        "auto",
        "How x_l, y_l are made: auto (translations in the file if present, else m2m100), file, m2m100 or nllb.",
        choices=("auto", "file", "m2m100", "nllb"),
    )
    translator_model: str | None = option(
        None,
        "Translation model; default facebook/m2m100_418M (m2m100) or facebook/nllb-200-distilled-600M (nllb). "
        "The paper used facebook/m2m100_1.2B.",
    )
    translation_batch_size: int = option(16, "Texts per translation batch.")
    cache_dir: str = option("cache", "Where translations and built datasets are cached (by content hash).")


@dataclass
class MethodConfig:
    method: list[str] = option(
        ["clo"],
        "Objective(s), one adapter each: clo (λ·L_SFT + (1−λ)·L_CL), sft, dpo (L_CL alone) or orpo.",
        cli="--method",
        label="Methods (one adapter each)",
    )
    lam: float = option(0.5, "λ in L_CLO = λ·L_SFT + (1−λ)·L_CL. The paper: 0.5.")
    beta: float = option(0.1, "β of the cross-lingual DPO term L_CL (not published; 0.1 is the usual DPO default).")
    orpo_lambda: float = option(0.1, "Weight of the odds-ratio term in ORPO.")
    sft_english: bool = option(False, "SFT also trains on the English pairs (y_en | x_en), not only on y_l | x_l.")


@dataclass
class TrainingConfig:
    name: str = option(
        "{method}-{lang}",
        "Adapter folder under adapters_dir; {method} and {lang} are filled in.",
        cli="--name",
        label="Adapter name",
    )
    adapters_dir: str = option("adapters", "Where finished adapters are written.", cli="--adapters-dir")
    runs_dir: str = option("runs", "Where each run's JSONL log and checkpoints go while it trains.")
    overwrite: bool = option(False, "Replace an existing adapter of the same name.", cli="--overwrite")
    max_steps: int = option(-1, "Optimizer steps; -1 = train for `epochs`.", cli="--max-steps", label="Max steps (−1: by epochs)")
    epochs: float = option(1.0, "Passes over the pairs when max_steps is -1.", cli="--epochs", label="Epochs")
    batch_size: int = option(4, "Cross-lingual pairs per process (device) per forward; several processes (torchrun) each take this many.", cli="--batch-size")
    grad_accum: int = option(1, "Gradient accumulation steps (pairs per step = batch_size × grad_accum × processes).")
    learning_rate: float = option(1e-4, "Peak learning rate.", cli="--lr")
    lr_scheduler: str = option("cosine", "Learning-rate schedule (transformers' names).")
    warmup: float = option(0.03, "Warm-up: a fraction of the steps if < 1, else a number of steps.")
    optim: str = option(
        "adamw_torch",
        "Optimizer (transformers' names): adamw_torch; adamw_8bit / paged_adamw_8bit with bitsandbytes; sgd, whose step "
        "is the gradient itself (tests/test_distributed.py compares processes' updates with it).",
        choices=("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd"),
    )
    parallel: str = option(
        "ddp",
        "How several processes (torchrun / accelerate launch) share the model: ddp (each holds all of it) or fsdp "
        "(PyTorch FSDP2 through transformers: weights, gradients and optimizer state sharded across the GPUs, for a "
        "base bigger than one GPU, 16-bit or 4-bit; one method per launch). One process ignores it. docs/training.md "
        "gives the commands.",
        choices=("ddp", "fsdp"),
    )
    max_length: int = option(512, "Longest prompt + answer, in tokens.")
    max_prompt_length: int = option(256, "Longest prompt, in tokens (longer prompts keep their end).")
    overlong: str = option(
        "cut",
        "Pairs longer than max_length / max_prompt_length: cut (prompts keep their end, answers their start) or drop. "
        "Either way the run says how many.",
        choices=("cut", "drop"),
    )
    gradient_checkpointing: str = option("auto", "auto = on with 4-bit, off otherwise.", choices=("auto", "true", "false"))
    backward: str = option(
        "sequence",
        "How a pair's four sequences are back-propagated, all giving the same gradient: pair (one pass, most memory), "
        "direction (x_l then x_en: half the activations) or sequence (one at a time, plus a no-grad pass over the "
        "rejected answers: the least memory, about 1/6 more compute).",
        choices=("pair", "direction", "sequence"),
    )
    logits_chunk: int = option(
        64,
        "Answer positions whose logits and log-softmax are computed at a time (recomputed in backward): the "
        "[tokens × vocabulary] float32 logits never exist whole. 0 = all at once (more memory, no recomputation).",
    )
    logging_steps: int = option(1, "Log every N steps.")
    save_steps: int = option(0, "Checkpoint every N steps into runs_dir (0 = no checkpoints).")
    seed: int = option(42, "Seed of LoRA initialisation and data order.")


SECTIONS = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "training": TrainingConfig,
}


@dataclass
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    # ---- building ----
    @classmethod
    def from_dict(cls, raw: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(raw, dict):
            raise CLOError(f"{where}: expected a mapping of sections ({', '.join(SECTIONS)}), got {_kind(raw)}")
        recipe = cls()
        for section, values in raw.items():
            if section not in SECTIONS:
                raise CLOError(f"{where}: unknown section {section!r}; known: {', '.join(SECTIONS)}")
            if values is None:
                continue
            if not isinstance(values, dict):
                raise CLOError(f"{where}: section {section!r} must be a mapping of keys to values, got {_kind(values)}")
            for key, value in values.items():
                recipe.set(f"{section}.{key}", value, where=where)
        recipe.validate()
        return recipe

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> "Recipe":
        """Dataclass defaults, then the YAML file, then `overrides` ({"section.field": value})."""
        raw: dict = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise CLOError(f"recipe file {path} does not exist")
            try:
                raw = yaml.safe_load(read_text(path, "recipe file"))  # decoded as data files are (clo.files)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                line = f", line {mark.line + 1}" if mark else ""
                raise CLOError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
        recipe = cls.from_dict({} if raw is None else raw, where=str(path or "recipe"))
        for key, value in (overrides or {}).items():
            recipe.set(key, value, where="command line")
        recipe.validate()
        return recipe

    def set(self, dotted: str, value: Any, where: str = "recipe") -> None:
        section, _, key = dotted.partition(".")
        if section not in SECTIONS:
            raise CLOError(f"{where}: unknown section {section!r} in {dotted!r}; known: {', '.join(SECTIONS)}")
        obj = getattr(self, section)
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if key not in fields:
            raise CLOError(f"{where}: unknown key {dotted!r}; {section} has {', '.join(fields)}")
        setattr(obj, key, coerce(fields[key], value, f"{where}: {dotted}"))

    # ---- checking ----
    def validate(self) -> None:
        self.data.target_lang = lang_code(self.data.target_lang)  # kor, KO, ko-KR → ko: adapter and field names use it
        for section in SECTIONS:
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, float) and not math.isfinite(value):
                    raise CLOError(f"{section}.{f.name} must be a finite number, got {value}")
        if self.data.target_lang == "en":
            raise CLOError("data.target_lang: the target language must not be English")
        for m in self.method.method:
            if m not in METHODS:
                raise CLOError(f"method.method: unknown method {m!r}; choose from {', '.join(METHODS)}")
        if not self.method.method:
            raise CLOError("method.method: name at least one method")
        if len(set(self.method.method)) != len(self.method.method):
            raise CLOError(f"method.method: a method is named twice in {self.method.method}")
        if not 0.0 <= self.method.lam <= 1.0:
            raise CLOError(f"method.lam must be in [0, 1], got {self.method.lam}")
        if self.method.beta <= 0:
            raise CLOError(f"method.beta must be > 0, got {self.method.beta}")
        if self.method.orpo_lambda < 0:
            raise CLOError(f"method.orpo_lambda must be ≥ 0, got {self.method.orpo_lambda}")
        if not 0.0 <= self.lora.dropout < 1.0:
            raise CLOError(f"lora.dropout must be in [0, 1), got {self.lora.dropout}")
        for name in ("pairs", "translation_batch_size"):
            if getattr(self.data, name) < 1:
                raise CLOError(f"data.{name} must be ≥ 1, got {getattr(self.data, name)}")
        t = self.training
        for name in ("batch_size", "grad_accum", "max_length", "max_prompt_length", "logging_steps"):
            if getattr(t, name) < 1:
                raise CLOError(f"training.{name} must be ≥ 1, got {getattr(t, name)}")
        if t.max_prompt_length >= t.max_length:
            raise CLOError(f"training.max_prompt_length ({t.max_prompt_length}) must be below max_length ({t.max_length})")
        if t.max_steps == 0 or t.max_steps < -1:
            raise CLOError(f"training.max_steps must be -1 or ≥ 1, got {t.max_steps}")
        if t.max_steps == -1 and t.epochs <= 0:
            raise CLOError(f"training.epochs must be > 0, got {t.epochs}")
        if t.logits_chunk < 0:
            raise CLOError(f"training.logits_chunk must be ≥ 0 (0 = whole logits), got {t.logits_chunk}")
        if t.learning_rate < 0:  # 0 is allowed: the gradient tests train without moving the weights
            raise CLOError(f"training.learning_rate must be ≥ 0, got {t.learning_rate}")
        if t.warmup < 0:
            raise CLOError(f"training.warmup must be ≥ 0, got {t.warmup}")
        for m in self.method.method:
            check_run_name(self.adapter_name(m))
        if self.lora.r < 1:
            raise CLOError(f"lora.r (the LoRA rank) must be ≥ 1, got {self.lora.r}")
        if self.lora.alpha <= 0:  # α / r scales the update: 0 trains nothing, a negative α flips its sign
            raise CLOError(f"lora.alpha must be > 0 (the update is scaled by α / r), got {self.lora.alpha}")
        if not self.lora.target_modules:
            raise CLOError("lora.target_modules must name at least one module, got none")
        if t.save_steps < 0:
            raise CLOError(f"training.save_steps must be ≥ 0 (0 = no checkpoints), got {t.save_steps}")
        if not 0 <= t.seed < 2**32:  # what numpy's seeding accepts (transformers seeds numpy with it)
            raise CLOError(f"training.seed must be a whole number from 0 to 2^32 − 1, got {t.seed}")

    def adapter_name(self, method: str) -> str:
        name = self.training.name.replace("{method}", method).replace("{lang}", self.data.target_lang)
        if len(self.method.method) > 1 and "{method}" not in self.training.name:
            name = f"{name}-{method}"  # one folder per method, never two methods in one folder
        return name

    # ---- writing ----
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        parts = []
        for section in SECTIONS:
            parts.append(f"# ---- {section} ----\n")
            parts.append(yaml.safe_dump({section: dataclasses.asdict(getattr(self, section))}, sort_keys=False, allow_unicode=True))
        return "".join(parts)

    def save(self, path: str | Path) -> None:
        atomic_write(path, self.to_yaml())


def _kind(value: Any) -> str:
    """How YAML calls a value's type, for messages: 'a list', 'a string (\'hello\')', ..."""
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bool) or value is None:
        return f"the value {value}"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"a string ({str(value)[:40]!r})"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_run_name(name: str) -> str:
    """A run / adapter name is one plain folder name: no '/', no '..', no leading dot."""
    if "/" in name or "\\" in name or ".." in name or not _NAME_RE.match(name):
        raise CLOError(
            f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' only "
            "(no '/', no '..', not starting with a dot), at most 100 characters"
        )
    return name


# ---- typing helpers shared by YAML, the command line and the UI ----

def base_type(f: dataclasses.Field) -> tuple[type, bool]:
    """(the field's scalar or list type, whether None is allowed)."""
    tp = f.type
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    return tp, optional


def coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Turn a YAML or command-line value into the field's type, or say exactly what is wrong."""
    tp, optional = base_type(f)
    choices = f.metadata.get("choices")
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise CLOError(f"{where}: a value is required")
    try:
        if typing.get_origin(tp) is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            out = [str(v).strip() for v in items if str(v).strip()]
        elif tp is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).lower() in ("true", "1", "yes", "on"):
                out = True
            elif str(value).lower() in ("false", "0", "no", "off"):
                out = False
            else:
                raise ValueError
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise CLOError(f"{where}: {value!r} is not a finite number; give a plain number such as 0.1")
        else:
            if isinstance(value, (dict, list, tuple, set)):
                raise ValueError
            out = str(value).lower() if choices else str(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise CLOError(f"{where}: {value!r} is not a valid {name}") from None
    if choices and out not in choices:
        raise CLOError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    if f.metadata.get("normalize"):
        try:
            out = f.metadata["normalize"](out)
        except CLOError as e:
            raise CLOError(f"{where}: {e}") from None
    return out
