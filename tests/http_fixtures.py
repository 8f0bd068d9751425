"""A real HTTP server on 127.0.0.1 for download tests: serves files from a
dict, honours ``Range: bytes=N-``, and can drop a connection mid-file or
ignore ``Range``. It stops by itself at the end of the test (or after
``lifetime`` seconds at most)."""

import contextlib
import http.server
import socket
import threading


class FileServer:
  """``files``: {'/path': bytes}. ``drop_after``: {'/path': (n_bytes,
  times)}: the next ``times`` responses for that path announce the full
  length but close after ``n_bytes``. ``ignore_range``: answer 200 with
  the whole file even to a Range request. ``requests``: (path, Range
  header or None) of every request."""

  def __init__(self):
    self.files = {}
    self.drop_after = {}
    self.ignore_range = False
    self.requests = []
    self._server = None

  @property
  def url(self) -> str:
    host, port = self._server.server_address[:2]
    return f"http://{host}:{port}"

  def _handler(self):
    owner = self

    class Handler(http.server.BaseHTTPRequestHandler):
      timeout = 10  # a stuck client cannot keep the thread forever

      def log_message(self, *args):  # quiet
        pass

      def do_GET(self):
        owner.requests.append((self.path, self.headers.get("Range")))
        data = owner.files.get(self.path)
        if data is None:
          self.send_error(404, "Not Found")
          return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and not owner.ignore_range:
          start = int(ranged.removeprefix("bytes=").split("-")[0])
          if start >= len(data):
            self.send_error(416, "Range Not Satisfiable")
            return
          self.send_response(206)
          self.send_header(
            "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
          )
        else:
          self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, times = owner.drop_after.get(self.path, (None, 0))
        if times > 0:
          owner.drop_after[self.path] = (cut, times - 1)
          self.wfile.write(body[:cut])
          self.wfile.flush()
          self.connection.shutdown(socket.SHUT_RDWR)
          self.close_connection = True
          return
        self.wfile.write(body)

    return Handler

  @contextlib.contextmanager
  def running(self, lifetime: float = 60.0):
    self._server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), self._handler()
    )
    self._server.daemon_threads = True
    thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(lifetime, self._server.shutdown)
    timer.daemon = True
    timer.start()
    try:
      yield self
    finally:
      timer.cancel()
      self._server.shutdown()
      self._server.server_close()
      thread.join(timeout=5)


def closed_port_url() -> str:
  """``http://127.0.0.1:<port>`` where nothing listens (connection
  refused): what a machine without network access sees."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}"
