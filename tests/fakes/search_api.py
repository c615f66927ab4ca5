"""Google's Custom Search JSON API (``GET /customsearch/v1``).

Answers with ``items[]`` of ``title``, ``link`` and ``snippet`` (the fields the search
backend reads), as many as the ``num`` parameter asks (three by default). The query
parameters of each request are recorded in ``server.requests``; ``Scripted.status`` gives
an error answer in Google's ``{"error": {"code", "message"}}`` shape, ``Scripted.delay``
a slow one, and ``Scripted.body`` (a dict) replaces the whole answer.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.fakes.server import LoopbackServer, Scripted, answer_error


def search_app(server: LoopbackServer) -> web.Application:
    """The application ``LoopbackServer`` serves."""

    async def customsearch(request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        scripted = server.next_answer(params, dict(request.headers))
        await asyncio.sleep(scripted.delay)
        if scripted.status is not None:
            body = scripted.body or {"error": {"code": scripted.status, "message": "Backend Error"}}
            return await answer_error(Scripted(status=scripted.status, body=body))
        if isinstance(scripted.body, dict):
            return web.json_response(scripted.body)
        count = int(params.get("num", "3"))
        items = [
            {
                "kind": "customsearch#result",
                "title": f"Result {n} for {params.get('q', '')}",
                "link": f"https://example.com/{n}",
                "snippet": f"Snippet {n}.",
            }
            for n in range(1, count + 1)
        ]
        return web.json_response({"kind": "customsearch#search", "items": items})

    app = web.Application()
    app.router.add_get("/customsearch/v1", customsearch)
    return app
