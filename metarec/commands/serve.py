"""``metarec serve``: an HTTP service for one model folder (FastAPI + uvicorn, ``metarec[serve]``)."""

from __future__ import annotations

import click


@click.command("serve")
@click.argument("model", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (the default accepts local connections only).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Inference threads.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch intra-op threads.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--max-ratings", type=click.IntRange(min=1), default=1000, show_default=True, help="Ratings per request.")
@click.option("--max-candidates", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Candidate or predicted items per request.")
@click.option("--max-k", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--max-pending", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests admitted at once; more get 503.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Concurrent /recommend requests adapted and scored in one model call (1 = one at a time).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info")
@click.option("--allow-other-version", is_flag=True, help="Serve a folder written by another metarec version.")
def serve(model: str, host: str, port: int, workers: int, threads: int, max_body_bytes: int, max_ratings: int,
          max_candidates: int, max_k: int, max_pending: int, max_batch: int, device: str, log_level: str,
          allow_other_version: bool) -> None:
    """Serve MODEL (a `metarec fit` folder): POST /recommend, POST /predict, GET /health, GET /model, /docs.

    \b
    Example:
      metarec serve models/mamo --port 8000
      curl -s localhost:8000/recommend -H 'content-type: application/json' \\
           -d '{"user": {"gender": "F", "age": "25"}, "ratings": [{"item": "1", "rating": 5}], "k": 5}'
    """
    try:
        import uvicorn

        from metarec.serving.http import Limits, create_app
    except ImportError as exc:
        raise click.ClickException(f"metarec serve needs FastAPI and uvicorn ({exc}): pip install 'metarec[serve]'") from None
    import torch

    from metarec.serving import ModelFolderError, load_model

    torch.set_num_threads(threads)
    try:
        m = load_model(model, device=device, allow_other_version=allow_other_version)
        limits = Limits(max_body_bytes=max_body_bytes, max_ratings=max_ratings, max_candidates=max_candidates,
                        max_k=max_k, max_pending=max_pending, workers=workers, max_batch=max_batch)
    except (ModelFolderError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    app = create_app(m, limits)
    # What is loaded now lives as long as the server: keep it out of the collector's full passes,
    # which would otherwise walk the model's and the frameworks' objects while requests wait
    import gc

    gc.collect()
    gc.freeze()
    click.echo(f"serving {m.method} ({len(m.catalogue)} items, {m.grad_mode}, batches of up to {max_batch}) on http://{host}:{port} "
               f"-- docs at /docs", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug")
