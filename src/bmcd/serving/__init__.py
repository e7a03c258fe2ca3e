"""``bmcd serve``: an HTTP service and upload page on the ONNX Runtime backend.

Needs the ``serve`` extra (``pip install 'bmcd[serve]'``: FastAPI, uvicorn,
python-multipart). Importing this package is light; :func:`create_app` imports FastAPI.
See ``docs/serving.rst`` for the API, the limits and the load test.

Examples
--------
>>> from bmcd.serving import create_app                      # doctest: +SKIP
>>> app = create_app("model/", precision="int8")              # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ServeLimits", "MicroBatcher"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "ServeLimits"):
        from . import app

        return getattr(app, name)
    if name == "MicroBatcher":
        from .batcher import MicroBatcher

        return MicroBatcher
    raise AttributeError(f"module 'bmcd.serving' has no attribute {name!r}")
