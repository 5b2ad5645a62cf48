"""Running the tracker: uvicorn with its access log off (announce URLs carry passkeys)."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from hfbt.config import TrackerConfig
from tracker.app import create_app

# Long-polls (next-job, manifest waits) would otherwise hold a shutdown for up to a minute.
SHUTDOWN_GRACE_S = 3


def configure_logging(level: int = logging.INFO) -> None:
    """key=value lines on stderr, unless the embedding program configured logging already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    root.addHandler(handler)
    root.setLevel(level)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn waits for open requests before the app's own shutdown: end the long-polls first.
        loop = getattr(self.config.app.state, "loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self.config.app.state.scheduler.close)
        super().handle_exit(sig, frame)


def serve(cfg: TrackerConfig) -> None:
    configure_logging()
    app = create_app(cfg)
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        access_log=False,
        log_config=None,  # keep our handlers; uvicorn's default config would install its own
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        server_header=False,
    )
    _Server(config).run()
