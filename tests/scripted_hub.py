"""A scripted Hugging Face hub on loopback: the few HTTP routes huggingface_hub's own code calls to create a model
or dataset repo, commit files to it (every file sent inline, "regular" upload mode: what CommitScheduler and
upload_folder send) and download a snapshot of it. Tests point huggingface_hub at it with HF_ENDPOINT (or its
`endpoint=`); the client code under test is huggingface_hub's, unchanged.

    hub = ScriptedHub.start()              # hub.url; hub.repos["me/x"] = [{"oid", "files": {path: bytes}, "changed"}, ...]
    hub.refuse_writes = 403                # every create and commit answers HTTP 403
    hub.refuse_commits = 403               # only commits do
    hub.refuse = 401                       # every request does
    hub.wait_commits(2)                    # the files each commit sent, once there are two
    hub.stop()

Routes (huggingface_hub 2.x), each for models and for datasets (`/api/datasets/...`, `/datasets/{repo}/...`):
GET /api/models (the reachability probe), POST /api/validate-yaml, POST /api/repos/create, POST
/api/{type}s/{repo}/preupload/{rev}, POST /api/{type}s/{repo}/commit/{rev} (NDJSON), GET
/api/{type}s/{repo}/revision/{rev}, GET /api/{type}s/{repo}/tree/{rev}, HEAD/GET /{repo}/resolve/{rev}/{path}.
Only what these tests need: no LFS, no xet, no pull requests, no pagination.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class ScriptedHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        # repo id -> commits, oldest first: {"oid", "files": every file then, "changed": the files that commit sent}
        self.repos: dict[str, list[dict]] = {}
        self.private: dict[str, bool] = {}
        self.created: list[dict] = []  # every create request's payload, in order (one that found the repo too)
        self.commits: list[dict[str, bytes]] = []  # the files each commit sent, in order, whatever the repo
        self.refuse: int | None = None  # an HTTP status every request answers with
        self.refuse_writes: int | None = None  # ... every create and commit
        self.refuse_commits: int | None = None  # ... every commit
        self.requests: list[tuple[str, str, bool]] = []  # (method, path, with a token)
        self.lock = threading.Lock()

    @classmethod
    def start(cls) -> "ScriptedHub":
        hub = cls()
        threading.Thread(target=hub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return hub

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def wait_commits(self, n: int, timeout: float = 30.0) -> list[dict[str, bytes]]:
        """`commits`, once there are at least `n` (CommitScheduler commits from its own thread)."""
        deadline = time.time() + timeout
        while len(self.commits) < n and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.commits) >= n, (self.commits, self.requests)
        return self.commits

    def files(self, repo: str, rev: str | None = None) -> dict[str, bytes]:
        """The files of `repo` at commit `rev` (None or a branch: the newest)."""
        commits = self.repos[repo]
        return next((c for c in commits if c["oid"] == rev), commits[-1])["files"]


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedHub

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body=b"", headers: dict | None = None, send_body: bool = True):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _error(self, status: int, message: str):
        self._reply(status, {"error": message}, {"Content-Type": "application/json", "X-Error-Message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _commit_of(self, repo: str, rev: str) -> dict | None:
        commits = self.server.repos.get(repo) or []
        if not commits:
            return None
        return commits[-1] if rev == "main" else next((c for c in commits if c["oid"] == rev), None)

    def _log(self, method: str):
        self.server.requests.append((method, urlparse(self.path).path, bool(self.headers.get("Authorization"))))

    def do_GET(self):
        self._log("GET")
        self._get(send_body=True)

    def do_HEAD(self):
        self._log("HEAD")
        self._get(send_body=False)

    def _get(self, send_body: bool):
        path = unquote(urlparse(self.path).path)
        if self.server.refuse:
            return self._reply(self.server.refuse, b"", {"X-Error-Message": "refused"}, send_body=send_body)
        if path == "/api/models":
            return self._reply(200, [], send_body=send_body)
        m = re.fullmatch(r"/api/(?:model|dataset)s/([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/.*)?", path)
        if m:
            repo, what, rev = m.groups()
            if repo not in self.server.repos:
                return self._reply(404, {"error": "Repository not found"},
                                   {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"})
            commit = self._commit_of(repo, rev)
            if commit is None:
                return self._reply(404, {"error": "Invalid rev id"},
                                   {"Content-Type": "application/json", "X-Error-Code": "RevisionNotFound"})
            if what == "revision":
                return self._reply(200, {"id": repo, "modelId": repo, "sha": commit["oid"],
                                         "private": self.server.private.get(repo, False),
                                         "siblings": [{"rfilename": p} for p in sorted(commit["files"])]})
            return self._reply(200, [{"type": "file", "path": p, "size": len(b),
                                      "oid": hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest()}
                                     for p, b in sorted(commit["files"].items())])
        m = re.fullmatch(r"/(?:datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo, rev, file = m.groups()
            commit = self._commit_of(repo, rev)
            if commit is None or file not in commit["files"]:
                code = "RepoNotFound" if repo not in self.server.repos else "EntryNotFound"
                return self._reply(404, b"", {"X-Error-Code": code}, send_body=send_body)
            data = commit["files"][file]
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            return self._reply(200, data, {"Content-Type": "application/octet-stream", "ETag": f'"{etag}"',
                                           "X-Repo-Commit": commit["oid"]}, send_body=send_body)
        self._error(404, f"no route {path}")

    def do_POST(self):
        self._log("POST")
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if self.server.refuse:
            return self._error(self.server.refuse, "Invalid credentials in Authorization header")
        if path == "/api/validate-yaml":  # upload_folder has a README's front matter checked before committing it
            return self._reply(200, {"errors": [], "warnings": []})
        if self.server.refuse_writes:
            return self._error(self.server.refuse_writes, "You don't have the rights to write to this repo")
        if not self.headers.get("Authorization"):
            return self._error(401, "Invalid credentials in Authorization header")
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            url = f"{self.server.url}/{'datasets/' if req.get('type') == 'dataset' else ''}{repo}"
            with self.server.lock:
                self.server.created.append(req)
                if repo in self.server.repos:  # the hub's 409 names the repo's URL, which create_repo reads
                    return self._reply(409, {"error": "You already created this repo", "url": url})
                self.server.repos[repo] = []
                self.server.private[repo] = bool(req.get("private")) or req.get("visibility") == "private"
            return self._reply(200, {"url": url, "name": repo})
        m = re.fullmatch(r"/api/(?:model|dataset)s/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if not m or m.group(1) not in self.server.repos:
            return self._error(404, f"no route or repo {path}")
        repo, what, _ = m.groups()
        if what == "preupload":
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if self.server.refuse_commits:
            return self._error(self.server.refuse_commits, "You don't have the rights to write to this repo")
        with self.server.lock:
            previous = self.server.repos[repo][-1]["files"] if self.server.repos[repo] else {}
            files, changed = dict(previous), {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    changed[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    files.pop(item["value"]["path"], None)
            files.update(changed)
            oid = hashlib.sha1(json.dumps(sorted((p, hashlib.sha256(b).hexdigest()) for p, b in files.items())).encode()
                               + str(len(self.server.repos[repo])).encode()).hexdigest()
            self.server.repos[repo].append({"oid": oid, "files": files, "changed": changed})
            self.server.commits.append(changed)
        self._reply(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{oid}", "commitOid": oid,
                          "pullRequestUrl": None})
