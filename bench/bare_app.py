"""The baseline: a bare Starlette POST endpoint that reads the body and answers 202 JSON (no work)."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hook(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"status": "accepted"}, status_code=202)


app = Starlette(routes=[Route("/webhooks/{source}", hook, methods=["POST"])])
