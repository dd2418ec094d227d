"""flowagg: aggregate network flow records per hour, with read-your-writes GETs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from flowagg.api import bp
from flowagg.config import resolve
from flowagg.durable import open_durable_store
from flowagg.shutdown import exit_on_sigterm
from flowagg.store import PartitionedStore


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings (defaults < environment < ``config``), store, blueprint.

    ``waitress-serve --call flowagg:create_app`` works as well as ``wsgi:app``.
    """
    app = Flask(__name__)
    app.config.update(resolve(os.environ, config))
    # Werkzeug answers 413 for larger bodies before reading them.
    app.config["MAX_CONTENT_LENGTH"] = app.config["FLOWAGG_MAX_BODY_BYTES"]

    if app.config["FLOWAGG_DATA_DIR"] is None:
        app.extensions["flowagg"] = PartitionedStore(
            partitions=app.config["FLOWAGG_PARTITIONS"],
            buffer_capacity=app.config["FLOWAGG_BUFFER_CAPACITY"],
        )
    else:  # replays the log before returning, so traffic is accepted only after recovery
        app.extensions["flowagg"] = store = open_durable_store(app.config)
        exit_on_sigterm(store)
    app.register_blueprint(bp)
    return app
