"""The Gradio app (Hugging Face Space entry point): train, compare side by side, judge blind, watch the tally.

    python app.py [--model ID_OR_PATH] [--adapters-dir DIR] [--db URL_OR_PATH] [--engine auto|vllm|remote|peft]
                  [--host H] [--port N] [--demo-mode]          # every flag also reads CLO_* environment variables

With no hub access and no local copy of the model, the app serves the synthetic miniature (clo.miniature: an
English-centric base model and its SFT and CLO adapters on an invented language, built once on CPU) and says so.
`--model miniature` asks for it outright.

A mistake in what it is given (a --db that is a folder, not SQLite, read-only, of a newer schema, or a database
that cannot be reached; a bad CLO_* number) ends it with one line, `error: ...`, and exit status 1; `--debug` or
CLO_DEBUG=1 shows the traceback instead.
"""

import json
import os
import sys

# vLLM's engine core runs in this process: a core process would be spawned, and a spawned process re-imports this
# module, which builds the app at import (as a Space needs) and would start a second engine
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from clo import CLOError
from clo.hub import hub_online, locate
from clo.ui import CSS, build_app
from clo.ui.services import Services, Settings, debug_wanted

def resolve_model(settings: Settings) -> str:
    """The model to serve, and a sentence saying plainly what it is."""
    asked = settings.model
    if asked != "miniature":
        source = locate(asked, kind="model", flag="--model")
        if source.local or hub_online() or _cached(asked):
            return f"{asked} on the {{engine}} engine"
    from clo.miniature.experiment import app_models

    base, adapters = app_models()
    settings.model = str(base)
    if settings.adapters_dir == Settings().adapters_dir:  # not chosen by the user: the miniature's own adapters
        settings.adapters_dir = str(adapters)
    size = json.loads((base / "miniature.json").read_text(encoding="utf-8"))["parameters"] / 1e6
    what = (f"the **synthetic miniature** ({base}): a {size:.1f}M-parameter English-centric model and its SFT and CLO adapters, "
            "trained here on an invented target language (its lexicon is in the Data tab)")
    if asked == "miniature":
        return what + ", on the {engine} engine"
    return (what + f". The Hugging Face hub is unreachable and {asked} is not cached here; "
            "start with --model PATH to serve a real model")


def _cached(model_id: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model_id, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 (any miss means: not usable offline)
        return False


def refuse(error: Exception, argv: list[str]):
    """End the start with one line (the traceback with --debug or CLO_DEBUG=1)."""
    if debug_wanted(argv):
        raise error
    hint = "" if isinstance(error, CLOError) else " (--debug or CLO_DEBUG=1 shows the traceback)"
    sys.exit(f"error: {error}{hint}")


ARGV = sys.argv[1:] if __name__ == "__main__" else []
try:
    settings = Settings.from_args(ARGV)
    if settings.trusted_proxies is not None:  # uvicorn takes the client from X-Forwarded-For only from these peers
        os.environ["FORWARDED_ALLOW_IPS"] = settings.trusted_proxies
    running_on = resolve_model(settings)
    services = Services(settings)
    services.running_on = running_on.format(engine=services.engine.kind)
    print(f"[clo] running on {services.running_on}", flush=True)
    if settings.demo_mode and not (settings.admin_password or settings.allowed_users):
        print("[clo] demo mode with no CLO_ADMIN_PASSWORD and no CLO_ALLOWED_USERS: nobody can train or change what "
              "is served from the web", flush=True)
    demo = build_app(services)
except (CLOError, OSError) as e:  # what the user gave is wrong: one line, not a traceback
    refuse(e, ARGV)

if __name__ == "__main__":
    # None lets Gradio read GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets 0.0.0.0); --host / --port win.
    # Gradio refuses an upload over the limit before it is stored; clo.jobs checks the size and rows again.
    try:
        demo.launch(server_name=settings.host, server_port=settings.port, css=CSS,
                    max_file_size=int(settings.max_upload_mb * 1e6))
    except (CLOError, OSError) as e:  # e.g. the port is taken
        refuse(e, ARGV)
