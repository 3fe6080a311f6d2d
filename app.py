"""The Gradio app (Hugging Face Space entry point): train, compare side by side, judge blind, watch the tally.

    python app.py [--model ID_OR_PATH] [--adapters-dir DIR] [--db URL_OR_PATH] [--engine auto|vllm|remote|peft]
                  [--host H] [--port N] [--demo-mode]          # every flag also reads CLO_* environment variables

With no hub access and no local copy of the model, the app starts on a tiny random model and says so.
"""

import sys
from pathlib import Path

from clo import CLOError
from clo.hub import hub_online, locate
from clo.ui import CSS, build_app
from clo.ui.services import Services, Settings

TINY = Path("models") / "tiny"


def resolve_model(settings: Settings) -> str:
    """The model to serve, and a sentence saying plainly what it is."""
    try:
        source = locate(settings.model, kind="model", flag="--model")
    except CLOError as e:
        sys.exit(f"error: {e}")
    if source.local or hub_online() or _cached(settings.model):
        return f"{settings.model} on the {{engine}} engine"
    from clo.tiny import build_tiny_model

    if not (TINY / "config.json").is_file():
        build_tiny_model(TINY)
    note = (f"a tiny random model ({TINY}) — the Hugging Face hub is unreachable and {settings.model} is not cached here, "
            "so answers are noise; start with --model PATH for a real model")
    settings.model = str(TINY)
    return note


def _cached(model_id: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model_id, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 (any miss means: not usable offline)
        return False


settings = Settings.from_args(sys.argv[1:] if __name__ == "__main__" else [])
running_on = resolve_model(settings)
services = Services(settings)
services.running_on = running_on.format(engine=services.engine.kind)
print(f"[clo] running on {services.running_on}", flush=True)
demo = build_app(services)

if __name__ == "__main__":
    demo.launch(server_name=settings.host, server_port=settings.port, css=CSS)
