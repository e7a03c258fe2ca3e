"""The ``bmcd serve`` command (docs/serving.rst): ``add_parser`` declares it, ``run`` runs it.

BmcdErrors propagate to the main CLI, which maps them to exit codes.
"""

from __future__ import annotations

import argparse
import sys

from ._common import add_command

__all__ = ["add_commands", "add_parser", "run"]

_MB = 1024 * 1024


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers``; returns its parser."""
    from ..serving.limits import ServeLimits

    d = ServeLimits()
    p = add_command(
        subparsers, "serve", run,
        "serve a model over HTTP with an upload page (needs the 'serve' extra)",
        "Serve MODEL with ONNX Runtime: POST /v1/predict (multipart images -> JSON), GET "
        "/v1/model, GET /healthz and an upload page at /. Stop with Ctrl-C.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory (or a bare .onnx file)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="fp32 (model.onnx) or int8 (the gated model.int8.onnx); default fp32")
    p.add_argument("--max-batch", type=int, default=32, metavar="N",
                   help="most images per inference call; 1 turns micro-batching off (default: 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long an image may wait for others to join its batch (default: 5)")
    p.add_argument("--max-request-mb", type=float, default=d.max_request_bytes / _MB, metavar="MB",
                   help=f"largest request body, 413 above (default: {d.max_request_bytes // _MB})")
    p.add_argument("--max-files", type=int, default=d.max_files, metavar="N",
                   help=f"most files per request, 413 above (default: {d.max_files})")
    p.add_argument("--max-image-mb", type=float, default=d.max_image_bytes / _MB, metavar="MB",
                   help=f"largest single file, per-image error above (default: {d.max_image_bytes // _MB})")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, metavar="N",
                   help=f"most pixels per image, per-image error above (default: {d.max_pixels})")
    p.add_argument("--log-level", default="warning",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn log level (default: warning)")
    return p


def run(args: argparse.Namespace) -> int:
    """Start the server for ``args`` (from :func:`add_parser`); returns 0 after Ctrl-C."""
    import socket

    from .._deps import optional_import
    from ..serving.app import create_app
    from ..serving.limits import ServeLimits

    uvicorn = optional_import("uvicorn", purpose="bmcd serve")
    limits = ServeLimits(
        max_request_bytes=int(args.max_request_mb * _MB),
        max_files=args.max_files,
        max_image_bytes=int(args.max_image_mb * _MB),
        max_pixels=args.max_pixels,
    )
    app = create_app(
        args.model, args.precision, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        limits=limits,
    )
    # bind here so that --port 0 works and the printed URL is the real one
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say TCP;
    # with proto 0 every response waited ~40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        from ..errors import ConfigError

        raise ConfigError(
            f"Cannot listen on {args.host}:{args.port} ({exc.strerror or exc}). Choose another "
            f"--port (0 picks a free one) or stop the program that uses it."
        ) from exc
    sock.listen(2048)  # connections made right after the URL is printed wait in the backlog
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    ident = app.state.identity
    print(
        f"bmcd serve: {ident['arch']} {ident['image_size']} px, {ident['precision']} "
        f"({ident['onnx_file']}, sha256 {ident['sha256'][:12]}), max batch {args.max_batch}, "
        f"wait {args.max_wait_ms:g} ms",
        flush=True,
    )
    print(f"bmcd serve: listening on http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="on")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])  # uvicorn handles SIGINT/SIGTERM: finishes requests, stops
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("bmcd serve: stopped", file=sys.stderr, flush=True)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    add_parser(sub)
