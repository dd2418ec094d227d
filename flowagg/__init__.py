"""flowagg: aggregate network flow records per hour, with read-your-writes GETs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from flowagg.api import bp
from flowagg.config import resolve
from flowagg.store import PartitionedStore


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings (defaults < environment < ``config``), store, blueprint.

    ``waitress-serve --call flowagg:create_app`` works as well as ``wsgi:app``.
    """
    app = Flask(__name__)
    app.config.update(resolve(os.environ, config))
    # Werkzeug answers 413 for larger bodies before reading them.
    app.config["MAX_CONTENT_LENGTH"] = app.config["FLOWAGG_MAX_BODY_BYTES"]

    app.extensions["flowagg"] = PartitionedStore(
        partitions=app.config["FLOWAGG_PARTITIONS"],
        buffer_capacity=app.config["FLOWAGG_BUFFER_CAPACITY"],
    )
    app.register_blueprint(bp)
    return app
