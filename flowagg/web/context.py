"""What a request handler reaches through the current app: its store and its metrics.

``create_app`` puts both in ``app.extensions``; nothing lives in module globals, so several apps
(as in the tests) serve side by side in one process.
"""

from __future__ import annotations

from flask import Flask, current_app

from flowagg.logs import AccessLog
from flowagg.metrics import Metrics
from flowagg.store.base import FlowStore


def get_store(app: Flask | None = None) -> FlowStore:
    return (app or current_app).extensions["flowagg"]


def get_metrics(app: Flask | None = None) -> Metrics:
    return (app or current_app).extensions["flowagg.metrics"]


def get_access_log(app: Flask | None = None) -> AccessLog:
    return (app or current_app).extensions["flowagg.access"]
