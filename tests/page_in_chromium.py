"""Opens a page in headless Chromium and waits until it shows a finished reply, driving the
browser over the DevTools protocol on a pipe (standard library only; tests/serve_clients.rs
runs it). A `--dump-dom` would not wait for a streamed reply.

    python tests/page_in_chromium.py CHROMIUM URL SCREENSHOT.png

Prints the model's name, the messages sent, the replies and any errors shown on the page as
JSON, and writes the screenshot.
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time

READY = "document.querySelector('.turn.done, .turn.error') !== null"
TEXT = """JSON.stringify({
  model: document.getElementById('model').textContent,
  asked: [...document.querySelectorAll('.turn.user')].map(e => e.textContent),
  replies: [...document.querySelectorAll('.turn.done')].map(e => e.textContent),
  errors: [...document.querySelectorAll('.turn.error')].map(e => e.textContent),
})"""


class DevTools:
    """The DevTools protocol over --remote-debugging-pipe: Chromium reads fd 3, writes fd 4."""

    def __init__(self, browser: str, profile: str):
        to_browser, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def wire():
            # Moved out of the way first: the pipes may already be numbered 3 or 4.
            read_end, write_end = os.dup(to_browser), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=900,700",
             "about:blank"],
            preexec_fn=wire, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser_w)
        self.next_id, self.buffer = 0, b""

    def call(self, method: str, session: str = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def read(self) -> dict:
        while b"\0" not in self.buffer:
            data = os.read(self.from_browser, 1 << 16)
            if not data:
                raise RuntimeError("the browser closed the pipe")
            self.buffer += data
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return result["result"].get("value")


def main() -> None:
    browser, url, shot = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as profile:
        tools = DevTools(browser, profile)
        try:
            target = tools.call("Target.createTarget", url=url)["targetId"]
            session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            deadline = time.monotonic() + 120
            while not tools.evaluate(session, READY):
                if time.monotonic() > deadline:
                    raise RuntimeError("no reply on the page after 120 s")
                time.sleep(0.2)
            page = json.loads(tools.evaluate(session, TEXT))
            png = tools.call("Page.captureScreenshot", session, format="png")["data"]
            with open(shot, "wb") as f:
                f.write(base64.b64decode(png))
            print(json.dumps(page))
        finally:
            try:
                tools.call("Browser.close")
            except RuntimeError:
                pass
            tools.process.wait(timeout=30)


if __name__ == "__main__":
    main()
