"""A tracking server that refuses the login: `configure` raises one `LoginRefusedError`
line naming the variables to set, never their values. The server here answers as MLflow's
basic-auth app does (its 401 and 403 bodies); tests/test_team.py meets the real one."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from petscan.params.results import MlflowParams
from petscan.tracking.store import LoginRefusedError, configure

BODIES = {401: b"You are not authenticated. Please see ...", 403: b"Permission denied"}


def refusing_server(status: int) -> ThreadingHTTPServer:
    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", str(len(BODIES[status])))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BODIES[status])

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("status", "login", "said"),
    [
        (401, None, "refused a request without login (HTTP 401): set MLFLOW_TRACKING_USERNAME"),
        (401, "env", "refused the login of MLFLOW_TRACKING_USERNAME='ann' (HTTP 401)"),
        (401, "file", "refused the login 'ann' of ~/.mlflow/credentials (HTTP 401)"),
        (403, "env", "refused user 'ann' (HTTP 403: no permission): ask its admin"),
        (403, "file", "refused user 'ann' (HTTP 403: no permission): ask its admin"),
    ],
)
def test_a_refused_login_is_one_line_without_the_password(
    status, login, said, tmp_path, monkeypatch, mlflow_globals_restored
):
    server = refusing_server(status)
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # it wins over params.yaml's, as in MLflow
    monkeypatch.setenv("HOME", str(tmp_path))  # MLflow's credentials file: ~/.mlflow/credentials
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    if login == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-Pa55")
    elif login == "file":
        (tmp_path / ".mlflow").mkdir()
        (tmp_path / ".mlflow" / "credentials").write_text(
            "[mlflow]\nmlflow_tracking_username = ann\nmlflow_tracking_password = s3cret-Pa55\n"
        )
    try:
        with pytest.raises(LoginRefusedError) as refused:
            configure(MlflowParams(tracking_uri=uri))
    finally:
        server.shutdown()
        server.server_close()
    message = str(refused.value)
    assert said in message and uri in message
    assert "\n" not in message and "s3cret-Pa55" not in message
