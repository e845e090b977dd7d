"""A loopback HTTP server speaking the part of the Hugging Face Hub API that push/pull of a pipeline uses.

Routes: repo creation, the pre-upload check (every file "regular"), ndjson commits with base64 content, repo info,
recursive tree listing, and ``resolve`` downloads with commit/etag headers. Enough for ``create_repo``,
``upload_folder``, ``snapshot_download`` and ``hf_hub_download`` of huggingface_hub; LFS/Xet uploads are not
spoken (every file is sent inline), which is the part real pushes of large ``.safetensors`` files would add.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class FakeHub:
    """In-memory repos: ``{repo_id: {"sha": str, "files": {path: bytes}, "private": bool}}``."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []
        self.commits: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _commit(self, repo_id: str, files: dict[str, bytes], deletions: list[str]) -> str:
        repo = self.repos[repo_id]
        repo["files"].update(files)
        for path in deletions:
            repo["files"].pop(path, None)
        digest = hashlib.sha1(repo["sha"].encode())
        for path in sorted(repo["files"]):
            digest.update(path.encode() + repo["files"][path])
        repo["sha"] = digest.hexdigest()
        return repo["sha"]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(
                self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"
            ):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, data) -> None:
                self._send(status, json.dumps(data).encode())

            def _not_found(self, kind: str = "RepoNotFound") -> None:
                self._send(404, json.dumps({"error": "not found"}).encode(), {"X-Error-Code": kind})

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            # -- API ---------------------------------------------------------------------------------------

            def do_POST(self):  # noqa: N802
                path = urlparse(self.path).path
                hub.requests.append(f"POST {path}")
                body = self._body()
                if path == "/api/repos/create":
                    data = json.loads(body or b"{}")
                    repo_id = f"{data.get('organization') or 'tester'}/{data['name']}"
                    if repo_id not in hub.repos:
                        hub.repos[repo_id] = {"sha": "0" * 40, "files": {}, "private": bool(data.get("private"))}
                        hub._commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"}, [])
                        return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                    return self._json(
                        409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                    )
                match = re.match(r"^/api/models/([^/]+/[^/]+)/preupload/([^/]+)$", path)
                if match:
                    files = json.loads(body)["files"]
                    return self._json(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                match = re.match(r"^/api/models/([^/]+/[^/]+)/branch/([^/]+)$", path)
                if match:
                    return self._json(200, {}) if match.group(1) in hub.repos else self._not_found()
                match = re.match(r"^/api/models/([^/]+/[^/]+)/commit/([^/]+)$", path)
                if match:
                    repo_id = match.group(1)
                    if repo_id not in hub.repos:
                        return self._not_found()
                    query = parse_qs(urlparse(self.path).query)
                    create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
                    revision = unquote(match.group(2))
                    files, deletions = {}, []
                    for line in body.decode().splitlines():
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        if item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] == "deletedFile":
                            deletions.append(item["value"]["path"])
                    hub.commits.append(
                        {"repo": repo_id, "revision": revision, "create_pr": create_pr, "files": sorted(files)}
                    )
                    if create_pr or revision != "main":  # kept aside: main is what downloads see
                        hub.repos[repo_id].setdefault("refs", {}).setdefault(revision, {}).update(files)
                        sha = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
                    else:
                        sha = hub._commit(repo_id, files, deletions)
                    number = len(hub.commits)
                    return self._json(
                        200,
                        {
                            "commitOid": sha,
                            "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}",
                            "success": True,
                            "pullRequestUrl": f"{hub.url}/{repo_id}/discussions/{number}" if create_pr else None,
                        },
                    )
                if path == "/api/validate-yaml":
                    return self._json(200, {"errors": [], "warnings": []})
                return self._not_found("EntryNotFound")

            def do_GET(self):  # noqa: N802
                self._get()

            def do_HEAD(self):  # noqa: N802
                self._get()

            def _get(self):
                parsed = urlparse(self.path)
                path = unquote(parsed.path)
                hub.requests.append(f"{self.command} {path}")
                match = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
                if match:
                    repo = hub.repos.get(match.group(1))
                    if repo is None:
                        return self._not_found()
                    return self._json(
                        200,
                        {
                            "id": match.group(1),
                            "modelId": match.group(1),
                            "sha": repo["sha"],
                            "private": repo["private"],
                            "siblings": [{"rfilename": name} for name in sorted(repo["files"])],
                        },
                    )
                match = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
                if match:
                    repo = hub.repos.get(match.group(1))
                    if repo is None:
                        return self._not_found()
                    prefix = (match.group(3) or "").strip("/")
                    entries, folders = [], set()
                    for name, content in sorted(repo["files"].items()):
                        if prefix and not name.startswith(prefix + "/"):
                            continue
                        parts = name.split("/")
                        for depth in range(1, len(parts)):
                            folders.add("/".join(parts[:depth]))
                        entries.append(
                            {
                                "type": "file",
                                "path": name,
                                "size": len(content),
                                "oid": hashlib.sha1(content).hexdigest(),
                            }
                        )
                    entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
                    return self._json(200, entries)
                match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if match:
                    repo = hub.repos.get(match.group(1))
                    if repo is None:
                        return self._not_found()
                    content = repo["files"].get(match.group(3))
                    if content is None:
                        return self._not_found("EntryNotFound")
                    etag = hashlib.sha256(content).hexdigest()
                    return self._send(
                        200,
                        content,
                        {
                            "X-Repo-Commit": repo["sha"],
                            "ETag": f'"{etag}"',
                            "Content-Disposition": f'attachment; filename="{match.group(3)}"',
                        },
                        content_type="application/octet-stream",
                    )
                return self._not_found("EntryNotFound")

        return Handler
