"""A Hugging Face Hub-compatible HTTP server for tests: standard library only, in memory, on 127.0.0.1.

It speaks the part of the Hub protocol that `huggingface_hub` 2.4 and transformers 5 use, so that the real clients
(`HfApi`, `hf_hub_download`, `snapshot_download`, `PreTrainedModel.push_to_hub` / `from_pretrained`) run against it
unchanged. Implemented:

- users and tokens (`Authorization: Bearer`), with write and read-only tokens, organizations, `whoami-v2`;
- model, dataset and space repos: create (with an initial commit holding `.gitattributes`), delete, settings,
  `repo_info` with `sha` and `siblings` (and blob metadata with `blobs=True`);
- private repos: anonymous readers get 401 and other users 404, both `X-Error-Code: RepoNotFound`, as the Hub does
  (so the client raises `RepositoryNotFoundError`); writes need a write token for the repo's namespace;
- revisions: branches, tags, `refs/heads/x`, `refs/pr/N`, full or short commit shas; create and delete branches,
  create tags, list refs and commits; `RevisionNotFound` for anything else;
- commits: `validate-yaml`, `preupload` (LFS by the branch's `.gitattributes`, size >= 10 MB or a binary sample, or
  every file regular with `upload_mode="regular"`), and the NDJSON `commit` with regular (base64) files, LFS files,
  deleted files and folders, `parentCommit` and `create_pr`. A commit is atomic: every operation is checked before
  any lands, and an LFS file whose object was never uploaded rejects the whole commit (422);
- git-LFS batch API, `basic` transfer: upload and verify hrefs; uploads PUT without auth to a second "storage" origin
  through a signed URL and are checked against their sha256 (use with `HF_HUB_DISABLE_XET=1`; the Xet token endpoints
  answer 501);
- `tree` (recursive or not, per path), `paths-info`, and `resolve` (HEAD and GET) with `X-Repo-Commit`, `ETag`,
  `Content-Length`, ranges, and for LFS files a 302 to the storage origin with `X-Linked-Etag` / `X-Linked-Size`;
  404s carry `X-Error-Code` `EntryNotFound` (with `X-Repo-Commit`), `RevisionNotFound` or `RepoNotFound`.

Tests can inject failures (`fail_next("storage-upload", 403)`) and read the request log (`requests`).

`huggingface_hub` reads `HF_ENDPOINT` when it is imported. A fresh process gets `client_env(server.url, home)` in its
environment; a test in a process that has already imported it calls `point_client_at(monkeypatch, server.url, home)`.

Example:

```python
>>> with HubServer() as server:
...     point_client_at(monkeypatch, server.url, tmp_path / "hf-home")
...     HfApi(token="hf_alice_write").create_repo("alice/saes")
```
"""

import base64
import fnmatch
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

# token -> (user, role). Role "read" tokens are refused on every write.
DEFAULT_TOKENS = {
    "hf_alice_write": ("alice", "write"),
    "hf_alice_read": ("alice", "read"),
    "hf_bob_write": ("bob", "write"),
}
DEFAULT_ORGS = {"sae-lab": {"alice"}}
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub refuses regular files from 10 MB on
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.npy", "*.npz",
                    "*.parquet", "*.arrow", "*.pkl", "*.pickle", "*.msgpack", "*.gz", "*.zip", "*.tar", "*.zst")
)  # fmt: skip
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SEG = r"([^/]+)"
_REPO = rf"(models|datasets|spaces)/{_SEG}/{_SEG}"
_PREFIXED_REPO = rf"(datasets/|spaces/)?{_SEG}/{_SEG}"
# (method, route name, pattern over the raw path). Captured segments are percent-decoded one by one.
ROUTES = [
    ("GET", "whoami", r"/api/whoami-v2"),
    ("POST", "create", r"/api/repos/create"),
    ("DELETE", "delete", r"/api/repos/delete"),
    ("POST", "validate-yaml", r"/api/validate-yaml"),
    ("PUT", "settings", rf"/api/{_REPO}/settings"),
    ("GET", "info", rf"/api/{_REPO}(?:/revision/{_SEG})?"),
    ("GET", "tree", rf"/api/{_REPO}/tree/{_SEG}(/.*)?"),
    ("POST", "paths-info", rf"/api/{_REPO}/paths-info/{_SEG}"),
    ("GET", "refs", rf"/api/{_REPO}/refs"),
    ("POST", "branch", rf"/api/{_REPO}/branch/{_SEG}"),
    ("DELETE", "delete-branch", rf"/api/{_REPO}/branch/{_SEG}"),
    ("POST", "tag", rf"/api/{_REPO}/tag/{_SEG}"),
    ("GET", "commits", rf"/api/{_REPO}/commits/{_SEG}"),
    ("POST", "preupload", rf"/api/{_REPO}/preupload/{_SEG}"),
    ("POST", "commit", rf"/api/{_REPO}/commit/{_SEG}"),
    ("GET", "xet", rf"/api/{_REPO}/xet-(?:read|write)-token/{_SEG}"),
    ("POST", "lfs-batch", rf"/{_PREFIXED_REPO}\.git/info/lfs/objects/batch"),
    ("POST", "lfs-verify", rf"/{_PREFIXED_REPO}\.git/info/lfs/objects/verify"),
    ("HEAD", "resolve", rf"/{_PREFIXED_REPO}/resolve/{_SEG}/(.+)"),
    ("GET", "resolve", rf"/{_PREFIXED_REPO}/resolve/{_SEG}/(.+)"),
]
STORAGE_ROUTES = [
    ("PUT", "storage-upload", rf"/objects/{_SEG}/{_SEG}/{_SEG}/{_SEG}"),
    ("GET", "storage-download", rf"/objects/{_SEG}/{_SEG}/{_SEG}/{_SEG}"),
]


class HubHTTPError(Exception):
    """An error answer: JSON `{"error": message}`, `X-Error-Message`, and `X-Error-Code` where the Hub sends one."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()
        )

    @property
    def oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer file for an LFS blob."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: list[str] = field(default_factory=list)  # refs/pr/N is pull_requests[N - 1]
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content, uploaded through the batch API

    @property
    def namespace(self) -> str:
        return self.id.split("/")[0]


@dataclass
class Request:
    method: str
    route: str
    args: list[str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubHTTPError(400, "The request body is not valid JSON") from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HubServer:
    """The Hub and its storage origin, on two ports of 127.0.0.1, sharing one in-memory state behind one lock.

    Args:
        tokens: `{token: (user, "write" | "read")}`.
        orgs: `{organization: {members}}`; members may write to the organization's repos.
        upload_mode: `"lfs"` answers preupload like the Hub (LFS for large, binary or `.gitattributes`-matched files);
            `"regular"` sends every file inline in the commit, so no LFS or Xet upload ever happens.
    """

    def __init__(self, tokens: dict | None = None, orgs: dict | None = None, upload_mode: str = "lfs"):
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.orgs = {org: set(members) for org, members in (DEFAULT_ORGS if orgs is None else orgs).items()}
        self.upload_mode = upload_mode
        self.lock = threading.RLock()
        self._secret = secrets.token_bytes(16)
        self._counter = itertools.count()
        self._servers: list[ThreadingHTTPServer] = []
        self.reset()

    # ---- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> "HubServer":
        for role in ("hub", "storage"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub, server.role = self, role
            threading.Thread(target=server.serve_forever, name=f"hub-server-{role}", daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def reset(self) -> None:
        """Forget every repo, queued failure and logged request."""
        with self.lock:
            self.repos: dict[tuple[str, str], Repo] = {}
            self.failures: dict[str, list[tuple[int, str]]] = {}
            self.requests: list[tuple[str, str, str]] = []  # (method, route, path)

    def fail_next(self, route: str, status: int = 500, message: str = "Injected failure", times: int = 1) -> None:
        """Answer the next `times` requests of `route` (a name in `ROUTES`, e.g. "commit", "storage-upload") with an
        error. The client retries 5xx answers itself; a 4xx fails at once."""
        with self.lock:
            self.failures.setdefault(route, []).extend([(status, message)] * times)

    # ---- dispatch -----------------------------------------------------------------------------------------------

    def handle(self, role: str, method: str, raw_path: str, headers: dict, body: bytes):
        """Returns `(status, body, headers)`; raises `HubHTTPError`."""
        split = urlsplit(raw_path)
        for route_method, route, pattern in ROUTES if role == "hub" else STORAGE_ROUTES:
            match = re.fullmatch(pattern, split.path)
            if match and route_method == method:
                break
        else:
            raise HubHTTPError(404, f"No route for {method} {split.path}")
        args = [unquote(arg) if arg is not None else None for arg in match.groups()]
        request = Request(method, route, args, parse_qs(split.query), headers, body)
        with self.lock:  # one request at a time: every change is atomic
            self.requests.append((method, route, unquote(split.path)))
            if self.failures.get(route):
                status, message = self.failures[route].pop(0)
                raise HubHTTPError(status, message)
            return getattr(self, "_" + route.replace("-", "_"))(request)

    # ---- auth and lookups ---------------------------------------------------------------------------------------

    def _user(self, request: Request, required: bool = False, write: bool = False) -> str | None:
        auth = request.headers.get("authorization", "")
        if not auth:
            if required:
                raise HubHTTPError(401, "You must be authenticated to do this: pass a token")
            return None
        user, role = self.tokens.get(auth.removeprefix("Bearer ").strip(), (None, None))
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        if write and role != "write":
            raise HubHTTPError(403, "This token is read-only: writes need a token with the write role")
        return user

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _repo(self, request: Request, write: bool = False, first: int = 0) -> Repo:
        """The repo named by `request.args[first:first + 3]` (`models`/`datasets/`/..., namespace, name)."""
        kind, namespace, name = request.args[first : first + 3]
        repo_type = REPO_TYPES[(kind or "models").rstrip("/")]
        user = self._user(request, required=write, write=write)
        repo = self.repos.get((repo_type, f"{namespace}/{name}"))
        if repo is None or (repo.private and not self._can_write(user, repo.namespace)):
            raise HubHTTPError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write and not self._can_write(user, repo.namespace):
            raise HubHTTPError(403, f"You don't have the rights to write to {repo.id}")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        """A branch, tag, refs/heads/x, refs/tags/x, refs/pr/N, or a full or short commit sha."""
        name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        commit_id = repo.branches.get(name) if not revision.startswith("refs/tags/") else None
        commit_id = commit_id or (repo.tags.get(name) if not revision.startswith("refs/heads/") else None)
        if pr := re.fullmatch(r"refs/pr/(\d+)", revision):
            number = int(pr.group(1))
            commit_id = repo.pull_requests[number - 1] if 0 < number <= len(repo.pull_requests) else None
        if commit_id is None and re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [sha for sha in repo.commits if sha.startswith(revision)]
            commit_id = matches[0] if len(matches) == 1 else None
        if commit_id is None:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[commit_id]

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIXES[repo.type]}{repo.id}"

    def _new_commit(self, repo: Repo, parent: str | None, title: str, message: str, author: str, files: dict) -> str:
        listing = sorted((path, blob.oid) for path, blob in files.items())
        seed = json.dumps([parent, listing, title, message, author, next(self._counter), time.time()])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, author, _now(), files)
        repo.commits[commit.id] = commit
        return commit.id

    def _storage_href(self, repo: Repo, oid: str, action: str) -> str:
        return (
            f"{self.storage_url}/objects/{repo.type}/{quote(repo.id, safe='')}/{oid}/{self._sign(repo, oid, action)}"
        )

    def _sign(self, repo: Repo, oid: str, action: str) -> str:
        return hmac.new(self._secret, f"{action}:{repo.type}:{repo.id}:{oid}".encode(), "sha256").hexdigest()[:32]

    # ---- repos --------------------------------------------------------------------------------------------------

    def _whoami(self, request: Request):
        user = self._user(request, required=True)
        role = self.tokens[request.headers["authorization"].removeprefix("Bearer ").strip()][1]
        orgs = [{"name": org, "type": "org"} for org, members in self.orgs.items() if user in members]
        return 200, {"type": "user", "name": user, "orgs": orgs, "auth": {"accessToken": {"role": role}}}

    def _create(self, request: Request):
        user = self._user(request, required=True, write=True)
        body = request.json()
        repo_type, namespace = body.get("type") or "model", body.get("organization") or user
        if repo_type not in URL_PREFIXES or not re.fullmatch(r"[\w.-]+", str(body.get("name", ""))):
            raise HubHTTPError(400, f"Invalid repo name {body.get('name')!r} or type {repo_type!r}")
        if not self._can_write(user, namespace):
            raise HubHTTPError(
                403, f"You don't have the rights to create a {repo_type} under the namespace {namespace}"
            )
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}
        repo = Repo(
            repo_type, repo_id, body.get("visibility", "public") == "private" or bool(body.get("private")), _now()
        )
        files = {".gitattributes": Blob(GITATTRIBUTES.encode(), lfs=False)}
        repo.branches["main"] = self._new_commit(repo, None, "initial commit", "", user, files)
        self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id}

    def _delete(self, request: Request):
        user = self._user(request, required=True, write=True)
        body = request.json()
        key = (body.get("type") or "model", f"{body.get('organization') or user}/{body.get('name')}")
        repo = self.repos.get(key)
        if repo is None or not self._can_write(user, repo.namespace):
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        del self.repos[key]
        return 200, {}

    def _settings(self, request: Request):
        repo = self._repo(request, write=True)
        body = request.json()
        if "visibility" in body or "private" in body:
            repo.private = body.get("visibility") == "private" if "visibility" in body else bool(body["private"])
        return 200, {}

    def _info(self, request: Request):
        repo = self._repo(request)
        commit = self._revision(repo, request.args[3] or "main")
        blobs = request.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [
            {"rfilename": path, **({"size": len(blob.data), "blobId": blob.oid} if blobs else {})}
            | ({"lfs": self._lfs_info(blob, key="sha256")} if blobs and blob.lfs else {})
            for path, blob in sorted(commit.files.items())
        ]
        info = {"id": repo.id, "_id": repo.id, "author": repo.namespace, "sha": commit.id, "private": repo.private,
                "lastModified": commit.date, "createdAt": repo.created, "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}  # fmt: skip
        return 200, info

    def _validate_yaml(self, request: Request):
        content = str(request.json().get("content", ""))
        errors = []
        if content.startswith("---") and "\n---" not in content[3:]:
            errors.append({"message": "The YAML metadata block of README.md is not closed by a `---` line"})
        return (400 if errors else 200), {"errors": errors, "warnings": []}

    # ---- refs and history ---------------------------------------------------------------------------------------

    def _refs(self, request: Request):
        repo = self._repo(request)

        def refs(table: dict, kind: str) -> list:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(table.items())]

        answer = {"branches": refs(repo.branches, "heads"), "tags": refs(repo.tags, "tags"), "converts": []}
        if request.query.get("include_prs"):
            answer["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                for n, c in enumerate(repo.pull_requests, 1)
            ]
        return 200, answer

    def _branch(self, request: Request):
        repo, branch = self._repo(request, write=True), request.args[3]
        if branch in repo.branches:
            raise HubHTTPError(409, f"Reference refs/heads/{branch} already exists")
        if branch.startswith("refs/") or not re.fullmatch(r"[\w./-]+", branch):
            raise HubHTTPError(400, f"Invalid branch name {branch!r}")
        repo.branches[branch] = self._revision(repo, request.json().get("startingPoint") or "main").id
        return 200, {}

    def _delete_branch(self, request: Request):
        repo, branch = self._repo(request, write=True), request.args[3]
        if branch not in repo.branches:
            raise HubHTTPError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        if branch == "main":
            raise HubHTTPError(403, "The main branch cannot be deleted")
        del repo.branches[branch]
        return 200, {}

    def _tag(self, request: Request):
        repo = self._repo(request, write=True)
        commit, tag = self._revision(repo, request.args[3]), request.json().get("tag", "")
        if tag in repo.tags:
            raise HubHTTPError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.id
        return 200, {}

    def _commits(self, request: Request):
        repo = self._repo(request)
        commit, history = self._revision(repo, request.args[3]), []
        while commit is not None:
            history.append({"id": commit.id, "title": commit.title, "message": commit.message, "date": commit.date,
                            "authors": [{"user": commit.author}]})  # fmt: skip
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return 200, history

    # ---- files --------------------------------------------------------------------------------------------------

    @staticmethod
    def _lfs_info(blob: Blob, key: str = "oid") -> dict:
        return {key: blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}

    def _entry(self, commit: Commit, path: str) -> dict | None:
        if (blob := commit.files.get(path)) is not None:
            entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
            return entry | ({"lfs": self._lfs_info(blob)} if blob.lfs else {})
        children = sorted(f"{p}:{b.oid}" for p, b in commit.files.items() if p.startswith(path + "/"))
        if path and children:
            return {"type": "directory", "oid": git_blob_sha1("\n".join(children).encode()), "size": 0, "path": path}
        return None

    def _tree(self, request: Request):
        repo = self._repo(request)
        commit, path = self._revision(repo, request.args[3]), (request.args[4] or "").strip("/")
        recursive = request.query.get("recursive", ["false"])[0].lower() == "true"
        if path and (self._entry(commit, path) or {}).get("type") != "directory":
            raise HubHTTPError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.id})
        prefix, names = path + "/" if path else "", set()
        for file in commit.files:
            if file.startswith(prefix):
                parts = file[len(prefix) :].split("/")
                depth = len(parts) if recursive else 1
                names.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        entries = [self._entry(commit, name) for name in sorted(names)]
        return 200, sorted(entries, key=lambda e: (e["type"] != "directory", e["path"]))

    def _paths_info(self, request: Request):
        repo = self._repo(request)
        commit = self._revision(repo, request.args[3])
        form = parse_qs(request.body.decode())
        paths = form.get("paths", []) if form else request.json().get("paths", [])
        return 200, [entry for path in paths if (entry := self._entry(commit, path.strip("/"))) is not None]

    def _resolve(self, request: Request):
        repo = self._repo(request)
        commit, path = self._revision(repo, request.args[3]), request.args[4]
        blob = commit.files.get(path)
        if blob is None:
            raise HubHTTPError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.id})
        headers = {"X-Repo-Commit": commit.id, "Accept-Ranges": "bytes"}
        if blob.lfs:  # like the Hub: a redirect to the storage origin, which the client follows without auth
            headers |= {"Location": self._storage_href(repo, blob.sha256, "download"), "ETag": f'"{blob.oid}"',
                        "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))}  # fmt: skip
            return 302, b"", headers
        return _ranged(request, blob.data, headers | {"ETag": f'"{blob.oid}"'})

    # ---- uploads ------------------------------------------------------------------------------------------------

    def _preupload(self, request: Request):
        repo = self._repo(request, write=True)
        commit = self._revision(repo, request.args[3])
        attributes = commit.files.get(".gitattributes", Blob(b"", False)).data.decode()
        patterns = [line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line]
        answers = []
        for file in request.json().get("files", []):
            path, size, sample = file["path"], int(file["size"]), base64.b64decode(file.get("sample", ""))
            lfs = self.upload_mode == "lfs" and (
                size >= LFS_THRESHOLD
                or b"\0" in sample
                or any(fnmatch.fnmatch(path.split("/")[-1], p) for p in patterns)
            )
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if lfs else existing.oid)
            answers.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return 200, {"files": answers}

    def _lfs_batch(self, request: Request):
        repo = self._repo(request, write=True)
        body = request.json()
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HubHTTPError(400, "This server supports only the `upload` operation with the `basic` transfer")
        verify = f"{self._repo_url(repo)}.git/info/lfs/objects/verify"
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append({"oid": str(oid), "size": 0, "error": {"code": 422, "message": "Invalid oid or size"}})
            elif oid in repo.lfs_objects:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, the client skips it
            else:
                actions = {"upload": {"href": self._storage_href(repo, oid, "upload")}, "verify": {"href": verify}}
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _storage_object(self, request: Request, action: str) -> tuple[Repo, str]:
        repo_type, repo_id, oid, signature = request.args
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or not hmac.compare_digest(signature, self._sign(repo, oid, action)):
            raise HubHTTPError(403, "Signature does not match or the repository is gone")
        return repo, oid

    def _storage_upload(self, request: Request):
        repo, oid = self._storage_object(request, "upload")
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise HubHTTPError(400, f"Uploaded content does not match its sha256 {oid}")
        repo.lfs_objects[oid] = request.body
        return 200, b""

    def _storage_download(self, request: Request):
        repo, oid = self._storage_object(request, "download")
        if oid not in repo.lfs_objects:
            raise HubHTTPError(404, "Object not found")
        return _ranged(request, repo.lfs_objects[oid], {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"})

    def _lfs_verify(self, request: Request):
        repo = self._repo(request, write=True)
        body = request.json()
        data = repo.lfs_objects.get(body.get("oid"))
        if data is None or len(data) != body.get("size"):
            raise HubHTTPError(404, f"LFS object {body.get('oid')} of size {body.get('size')} was not uploaded")
        return 200, {}

    def _xet(self, request: Request):
        raise HubHTTPError(501, "This test server does not speak Xet: set HF_HUB_DISABLE_XET=1")

    def _commit(self, request: Request):
        repo = self._repo(request, write=True)
        user, revision = self._user(request), request.args[3]
        try:
            lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
        except ValueError:
            raise HubHTTPError(400, "The commit payload is not NDJSON") from None
        if not lines or lines[0].get("key") != "header":
            raise HubHTTPError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        create_pr = request.query.get("create_pr", ["0"])[0] in ("1", "true")
        if create_pr:
            parent = self._revision(repo, revision)
        elif (branch := revision.removeprefix("refs/heads/")) in repo.branches:
            parent = repo.commits[repo.branches[branch]]
        elif re.fullmatch(r"refs/pr/\d+", revision):
            parent = self._revision(repo, revision)
        else:
            raise HubHTTPError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        if header.get("parentCommit") and header["parentCommit"] != parent.id:
            raise HubHTTPError(412, f"parentCommit {header['parentCommit']} is not the head of {revision}")
        files = self._apply(repo, dict(parent.files), lines[1:])  # raises before anything is stored
        title, message = header.get("summary") or "Update", header.get("description") or ""
        commit_id = self._new_commit(repo, parent.id, title, message, user, files)
        answer = {"commitOid": commit_id, "commitUrl": f"{self._repo_url(repo)}/commit/{commit_id}"}
        if create_pr:
            repo.pull_requests.append(commit_id)
            answer["pullRequestUrl"] = f"{self._repo_url(repo)}/discussions/{len(repo.pull_requests)}"
        elif revision.startswith("refs/pr/"):
            repo.pull_requests[int(revision.split("/")[-1]) - 1] = commit_id
        else:
            repo.branches[revision.removeprefix("refs/heads/")] = commit_id
        return 200, answer

    def _apply(self, repo: Repo, files: dict[str, Blob], operations: list[dict]) -> dict[str, Blob]:
        for operation in operations:
            key, value = operation.get("key"), operation.get("value", {})
            path = str(value.get("path", ""))
            if not path or path.startswith("/") or ".." in path.split("/") or path.startswith(".git/"):
                raise HubHTTPError(400, f"Invalid path in commit: {path!r}")
            if key == "file":
                try:
                    files[path] = Blob(base64.b64decode(value["content"], validate=True), lfs=False)
                except (KeyError, ValueError):
                    raise HubHTTPError(400, f"Invalid base64 content for {path}") from None
            elif key == "lfsFile":
                data = repo.lfs_objects.get(value.get("oid"))
                if data is None or value.get("size", len(data)) != len(data):
                    raise HubHTTPError(
                        422,
                        f"LFS object {value.get('oid')} for {path} was referenced but never uploaded: commit refused",
                    )
                files[path] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubHTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                inside = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                if not inside:
                    raise HubHTTPError(404, "A folder with this name doesn't exist", "EntryNotFound")
                for p in inside:
                    del files[p]
            else:
                raise HubHTTPError(400, f"Unknown commit operation {key!r}")
        return files


def _ranged(request: Request, data: bytes, headers: dict):
    """200 with the whole content, or 206 for a `Range: bytes=start-[end]` request."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
    if not match:
        return 200, data, headers
    start, end = int(match.group(1)), int(match.group(2) or len(data) - 1)
    if start >= len(data) and data:
        raise HubHTTPError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
    end = min(end, len(data) - 1)
    return 206, data[start : end + 1], headers | {"Content-Range": f"bytes {start}-{end}/{len(data)}"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length and every body is read in full

    def _serve(self) -> None:
        body = self._read_body()
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            status, payload, *extra = self.server.hub.handle(self.server.role, self.command, self.path, headers, body)
            out_headers = extra[0] if extra else {}
        except HubHTTPError as error:
            status, payload = error.status, {"error": error.message}
            out_headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                out_headers["X-Error-Code"] = error.code
        except Exception as error:  # a server bug: say so, rather than hang the client
            status, payload, out_headers = 500, {"error": f"{type(error).__name__}: {error}"}, {}
            self.close_connection = True
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            out_headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for key, value in out_headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, then the final empty line
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass


def client_env(endpoint: str, hf_home: str) -> dict[str, str]:
    """Environment variables that point a fresh process's `huggingface_hub` at `endpoint` (set before import)."""
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}  # fmt: skip


def point_client_at(monkeypatch, endpoint: str, hf_home) -> None:
    """Point an already imported `huggingface_hub` (and transformers) at `endpoint`, for one test.

    `huggingface_hub` reads `HF_ENDPOINT`, `HF_HOME` and friends when it is imported, and transformers caches an
    `HfApi`, so setting environment variables after the first import is not enough: this patches the constants the
    client reads at call time, the module-level `HfApi` behind `huggingface_hub.create_repo` and friends, and resets
    transformers' cached one. The cache and token file go under `hf_home`, so no real token or cache is used.
    """
    import sys

    import huggingface_hub.hf_api
    from huggingface_hub import constants

    for name, value in client_env(endpoint, hf_home).items():
        monkeypatch.setenv(name, value)  # for subprocesses
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": f"{hf_home}/hub",
        "HF_TOKEN_PATH": f"{hf_home}/token",
        "HF_STORED_TOKENS_PATH": f"{hf_home}/stored_tokens",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    if "transformers.utils.hub" in sys.modules:
        monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
