"""A script the demo's page runs before Gradio's own: slows Gradio's status-tracker frame loop from 60 to 4 a second.

Gradio's status tracker (its `statustracker-*.js` chunk) redraws its elapsed-time counter with a
`requestAnimationFrame` loop that, once started on a page, never stops: an idle demo page asked for 60 frames a
second, and its renderer used 9.5% of a core instead of 1.9% (Gradio 6.31, headless Chromium). When the browser
shares the machine with the model, that CPU is taken from generation: with the four benchmark pages open, one
user's answer streamed at 11.6-12.0 tokens/s with the loop and 13.2-14.1 without it (SmolLM2, 2 cores).

The chunk keeps its own reference to `window.requestAnimationFrame`, taken when it is loaded, so the replacement
must be in place before Gradio's modules run: Gradio inserts `launch(head=...)` into the page only after they
have, so `EarlyScript` puts the script at the top of the served page's `<head>` instead. Frame requests from
the status tracker are then served 4 times a second (its counter shows tenths of a second); every other caller
of `requestAnimationFrame` is untouched. A Gradio whose chunk has another name is left as it is.
"""

from __future__ import annotations

STATUS_TRACKER_FRAMES = b"""<script>
(() => {
  const STATUS_TRACKER_FRAME_MS = 250;
  const requestFrame = window.requestAnimationFrame.bind(window);
  const cancelFrame = window.cancelAnimationFrame.bind(window);
  const slowed = new Map();  // our ids (negative: never a browser frame id) -> setTimeout handle
  let nextId = -1;
  window.requestAnimationFrame = (callback) => {
    if (!(new Error().stack || "").includes("/statustracker-")) return requestFrame(callback);
    const id = nextId--;
    slowed.set(id, setTimeout(() => { slowed.delete(id); callback(performance.now()); }, STATUS_TRACKER_FRAME_MS));
    return id;
  };
  window.cancelAnimationFrame = (id) => {
    if (!slowed.has(id)) return cancelFrame(id);
    clearTimeout(slowed.get(id));
    slowed.delete(id);
  };
})();
</script>"""


class EarlyScript:
    """ASGI middleware: inserts `script` right after `<head>` of the app's page (`GET /`); other requests pass.

    Only an uncompressed HTML page is changed (its Content-Length is set anew); everything else, streams
    included, goes through untouched.

    Args:
        app: the ASGI app (Gradio's FastAPI app).
        script: the `<script>...</script>` bytes to insert.
    """

    def __init__(self, app, script: bytes = STATUS_TRACKER_FRAMES) -> None:
        self.app = app
        self.script = script

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path") != "/":
            await self.app(scope, receive, send)
            return
        start: dict = {}
        body: list[bytes] = []

        async def rewrite(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            page = b"".join(body)
            names = {k.lower(): v for k, v in headers}
            if names.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in names:
                page = page.replace(b"<head>", b"<head>" + self.script, 1)
            await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
            await send({"type": "http.response.body", "body": page})

        await self.app(scope, receive, rewrite)
