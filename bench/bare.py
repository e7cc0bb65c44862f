"""The baseline for callback ingest: bare Starlette on the same uvicorn settings,
reading the same body and answering 200 `{}`."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def bare(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({})


app = Starlette(routes=[Route("/{path:path}", bare, methods=["POST", "GET"])])


if __name__ == "__main__":
    from bench._cli import describe

    describe(__doc__)
