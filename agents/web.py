"""Reference agents of the web and files group: UnifiedWebAgent, FileSystemAssistantAgent.

Both are fenced in. UnifiedWebAgent fetches only URLs under the prefixes of its `config.allow` list
(empty by default: it fetches nothing until a profile allows something), redirects included, with no proxy
from the environment. FileSystemAssistantAgent works only inside its root directory (`config.root`, by
default a fresh temporary one): every path is resolved one component at a time from a descriptor of the
root (openat with O_NOFOLLOW), so absolute paths, `..` and symbolic links are refused, whatever they
point at, and a rename or a link made meanwhile cannot lead it out.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import stat
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from sunsetd.agent import AgentError, BadRequest

from agents.infrastructure import field
from agents.pc2_core import MOS, EdgeAgent

FILES = "FileSystemAssistantAgent"
UTILS = "UnifiedUtilsAgent"


# ---- FileSystemAssistantAgent ----------------------------------------------------------------------------
class PathRefused(BadRequest):
    """A path that would leave the root, or go through a symbolic link."""


def path_parts(path: Any) -> list[str]:
    """The components of a path relative to the root; PathRefused for absolute paths and `..`."""
    if not isinstance(path, str):
        raise BadRequest("path must be a string")
    if "\0" in path:
        raise PathRefused("path contains a NUL byte")
    if path.startswith("/"):
        raise PathRefused(f"absolute paths are refused ({path!r}): paths are relative to the root")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"path traversal is refused ({path!r})")
    return parts


class FileSystemAssistantAgent(EdgeAgent):
    """File operations confined to one directory.

    Real: write (create, overwrite, append), read, list, stat, mkdir, delete, move and find (name patterns
    and text) inside the root (`config.root`, else a fresh `tempfile.mkdtemp()`, removed at a clean stop),
    every path walked from a
    descriptor of the root with O_NOFOLLOW: absolute paths, `..` and symbolic links (even ones pointing
    inside) are refused with bad_request; `export` stages a copy of a file in UnifiedUtilsAgent's
    temporary directory (to hand out, cleaned up by age there). Stands in: nothing.
    """

    CAPABILITIES = ("files.read", "files.write", "files.search")

    def setup(self) -> None:
        root = self.config.get("root")
        self.own_root = not root  # a fresh root of ours is scratch space: it goes at a clean stop
        if not root:
            import tempfile  # here: an agent given its root never loads it

            root = tempfile.mkdtemp(prefix="fsa-")
        self.root = os.path.realpath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.rootfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.max_read = int(self.config.get("max_read_bytes", 512 * 1024))
        super().setup()

    def teardown(self) -> None:
        os.close(self.rootfd)
        if self.own_root:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)  # removes links, never what they point at

    # ---- walking
    def _open_dir(self, name: str, dirfd: int, where: str) -> int:
        try:
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and self._is_link(name, dirfd):
                raise PathRefused(f"{where} is a symbolic link: refused") from None
            if exc.errno == errno.ENOTDIR:
                raise BadRequest(f"{where} is not a directory") from None
            if exc.errno == errno.ENOENT:
                raise BadRequest(f"no such directory: {where}") from None
            raise AgentError(f"{where}: {exc.strerror}") from None

    @staticmethod
    def _is_link(name: str, dirfd: int) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def _dir(self, parts: list[str], create: bool = False) -> int:
        """A new descriptor of the directory these parts name (made when `create`); the caller closes it."""
        fd = os.dup(self.rootfd)
        try:
            for i, part in enumerate(parts):
                where = "/".join(parts[: i + 1])
                if create:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass
                nxt = self._open_dir(part, fd, where)
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _parent(self, path: Any, create: bool = False) -> tuple[int, str, str]:
        parts = path_parts(path)
        if not parts:
            raise BadRequest("this operation needs a path below the root")
        return self._dir(parts[:-1], create), parts[-1], "/".join(parts)

    def _open_file(self, path: Any, flags: int, create_dirs: bool = False) -> tuple[int, str]:
        dirfd, name, rel = self._parent(path, create_dirs)
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd), rel
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and self._is_link(name, dirfd)):
                raise PathRefused(f"{rel} is a symbolic link: refused") from None
            if exc.errno == errno.ENOENT:
                raise BadRequest(f"no such file: {rel}") from None
            if exc.errno == errno.EEXIST:
                raise BadRequest(f"{rel} exists (overwrite: true replaces it)") from None
            if exc.errno == errno.EISDIR:
                raise BadRequest(f"{rel} is a directory") from None
            raise AgentError(f"{rel}: {exc.strerror}") from None
        finally:
            os.close(dirfd)

    def _read(self, path: Any, max_bytes: int) -> tuple[bytes, str, int]:
        fd, rel = self._open_file(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadRequest(f"{rel} is not a regular file")
            chunks, left = [], max_bytes
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks), rel, st.st_size
        finally:
            os.close(fd)

    @staticmethod
    def _entry(name: str, st: os.stat_result) -> dict:
        kind = "file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else \
            "symlink" if stat.S_ISLNK(st.st_mode) else "other"
        return {"name": name, "kind": kind, "bytes": st.st_size if kind == "file" else 0}

    # ---- ops
    def handle_root(self, body: Any) -> dict:
        return {"root": self.root}

    def handle_write(self, body: Any) -> dict:
        """{path, content: text or bytes, overwrite?: true, append?: false}: missing directories are made."""
        content = field(body, "content", (str, bytes))
        data = content.encode() if isinstance(content, str) else content
        append, overwrite = field(body, "append", bool, False), field(body, "overwrite", bool, True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC if overwrite else os.O_EXCL)
        fd, rel = self._open_file(body.get("path"), flags, create_dirs=True)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadRequest(f"{rel} is not a regular file")
            os.write(fd, data)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self.counters["writes"] += 1
        return {"path": rel, "written": len(data), "bytes": size}

    def handle_read(self, body: Any) -> dict:
        """{path, max_bytes?} -> content (text when it is UTF-8, else bytes), size, truncated."""
        data, rel, size = self._read(field(body, "path", str), min(field(body, "max_bytes", int, self.max_read),
                                                                   self.max_read))
        try:
            content: str | bytes = data.decode()
        except UnicodeDecodeError:
            content = data
        self.counters["reads"] += 1
        return {"path": rel, "content": content, "bytes": size, "truncated": len(data) < size,
                "binary": isinstance(content, bytes)}

    def handle_list(self, body: Any) -> dict:
        """{path?} -> the directory's entries, sorted (links are listed, never followed)."""
        path = field(body, "path", str, "") if isinstance(body, dict) else ""
        fd = self._dir(path_parts(path))
        try:
            entries = sorted((self._entry(e.name, e.stat(follow_symlinks=False)) for e in os.scandir(fd)),
                             key=lambda e: e["name"])
        finally:
            os.close(fd)
        return {"path": "/".join(path_parts(path)), "entries": entries}

    def handle_stat(self, body: Any) -> dict:
        dirfd, name, rel = self._parent(field(body, "path", str))
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return {"path": rel, "exists": False}
        finally:
            os.close(dirfd)
        return {"path": rel, "exists": True, **self._entry(name, st), "mtime": st.st_mtime}

    def handle_mkdir(self, body: Any) -> dict:
        parts = path_parts(field(body, "path", str))
        os.close(self._dir(parts, create=True))
        return {"path": "/".join(parts), "created": True}

    def handle_delete(self, body: Any) -> dict:
        """{path}: a file, a link (the link only) or an empty directory."""
        dirfd, name, rel = self._parent(field(body, "path", str))
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=dirfd)
            else:
                os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:
            return {"path": rel, "deleted": False}
        except OSError as exc:
            raise BadRequest(f"cannot delete {rel}: {exc.strerror}") from None
        finally:
            os.close(dirfd)
        self.counters["deletes"] += 1
        return {"path": rel, "deleted": True}

    def handle_move(self, body: Any) -> dict:
        """{src, dst, overwrite?: false}: rename within the root."""
        sfd, sname, srel = self._parent(field(body, "src", str))
        try:
            dfd, dname, drel = self._parent(field(body, "dst", str), create=True)
        except BaseException:
            os.close(sfd)
            raise
        try:
            try:
                os.stat(dname, dir_fd=dfd, follow_symlinks=False)
                exists = True
            except FileNotFoundError:
                exists = False
            if exists and not field(body, "overwrite", bool, False):
                raise BadRequest(f"{drel} exists (overwrite: true replaces it)")
            try:
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            except FileNotFoundError:
                raise BadRequest(f"no such file: {srel}") from None
            except OSError as exc:
                raise BadRequest(f"cannot move {srel} to {drel}: {exc.strerror}") from None
        finally:
            os.close(sfd)
            os.close(dfd)
        return {"src": srel, "dst": drel, "moved": True}

    def handle_find(self, body: Any) -> dict:
        """{pattern?: '*', text?, limit?: 100} -> files whose name matches and, with text, whose content has it."""
        body = body if isinstance(body, dict) else {}
        pattern, text = field(body, "pattern", str, "*"), field(body, "text", str, None)
        limit = field(body, "limit", int, 100)
        needle = text.encode() if text else None
        hits = []
        for dirpath, _dirs, files, dirfd in os.fwalk(".", dir_fd=self.rootfd, follow_symlinks=False):
            for name in sorted(files):
                if not fnmatch.fnmatch(name, pattern):
                    continue
                rel = posixpath.normpath(posixpath.join(dirpath, name))
                if needle is not None:
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                    except OSError:
                        continue  # a link, or gone
                    try:
                        if not stat.S_ISREG(os.fstat(fd).st_mode) or needle not in os.read(fd, self.max_read):
                            continue
                    finally:
                        os.close(fd)
                hits.append(rel)
        hits.sort()
        return {"matches": hits[:limit], "total": len(hits)}

    def handle_export(self, body: Any) -> dict:
        """{path}: a copy of the file in UnifiedUtilsAgent's temporary directory; its name there."""
        data, rel, size = self._read(field(body, "path", str), self.max_read)
        if len(data) < size:
            raise BadRequest(f"{rel} is over the {self.max_read}-byte export limit")
        suffix = os.path.splitext(rel)[1][:16]
        staged = self.call(UTILS, "write", {"content": data, "suffix": suffix}, timeout=2.0)
        self.counters["exports"] += 1
        return {"path": rel, "temp": staged["name"], "bytes": staged["bytes"]}


# ---- UnifiedWebAgent -------------------------------------------------------------------------------------
class _Page(HTMLParser):
    """Title, visible text and links of an HTML page (scripts and styles skipped)."""

    def __init__(self, base: str):
        super().__init__(convert_charrefs=True)
        self.base, self.title, self.text, self.links = base, "", [], []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(urljoin(self.base, href))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip and data.strip():
            self.text.append(" ".join(data.split()))


def parse_allow(entry: Any) -> tuple[str, str, int, str]:
    """An allow-list entry: an http(s) URL prefix -> (scheme, host, port, path prefix)."""
    if not isinstance(entry, str):
        raise ValueError(f"allow entries must be URL prefixes, got {entry!r}")
    u = urlsplit(entry)
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.query or u.fragment:
        raise ValueError(f"allow entry {entry!r} must be http(s)://host[:port]/path-prefix")
    return u.scheme, u.hostname.lower(), u.port or (443 if u.scheme == "https" else 80), u.path or "/"


def normalize_url(url: str) -> tuple[str, tuple[str, str, int, str]]:
    """The URL with its path normalised (no `.`, `..`, doubled slashes) and its parts; BadRequest if unfit."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise BadRequest(f"only http(s) URLs with a host can be fetched, not {url!r}")
    if u.username or u.password:
        raise BadRequest("URLs with credentials are refused")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise BadRequest(f"bad port in {url!r}") from None
    if "\\" in u.path or any(code in u.path.lower() for code in ("%2e", "%2f", "%5c", "%00")):
        raise BadRequest(f"encoded dots, slashes or backslashes in the path are refused: {url!r}")
    path = posixpath.normpath(u.path or "/")
    path = "/" + path.lstrip("/") + ("/" if u.path.endswith("/") and path != "/" else "")
    netloc = u.hostname.lower() + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, path, u.query, "")), (u.scheme, u.hostname.lower(), port, path)


class UnifiedWebAgent(EdgeAgent):
    """Fetches web pages, only from an allow-list (none by default), and keeps what it fetched.

    Real: HTTP(S) GET with urllib (no proxy taken from the environment, a timeout, at most `max_bytes`),
    refused with bad_request unless the normalised URL is under a prefix of `config.allow` (scheme, host,
    port and path prefix; every redirect is checked the same way); HTML is reduced to title, text and
    links; each page is stored in MemoryOrchestratorService (namespace `web:pages`, searchable by words
    with `search`), and `save_as` writes the body through FileSystemAssistantAgent into its root.
    Stands in: nothing; with the default empty allow-list it fetches nothing.
    """

    CAPABILITIES = ("web.fetch", "web.pages")
    NS = "web:pages"

    def setup(self) -> None:
        self.allow = [parse_allow(e) for e in self.config.get("allow") or ()]
        self.max_bytes = int(self.config.get("max_bytes", 512 * 1024))
        self.timeout_s = float(self.config.get("timeout_s", 5.0))
        self.max_text = int(self.config.get("max_text_chars", 20_000))
        super().setup()

    def _check(self, url: str) -> str:
        clean, (scheme, host, port, path) = normalize_url(url)
        for a_scheme, a_host, a_port, a_path in self.allow:
            if (scheme, host, port) == (a_scheme, a_host, a_port) and (
                    path == a_path or path.startswith(a_path if a_path.endswith("/") else a_path + "/")):
                return clean
        self.counters["refused"] += 1
        raise BadRequest(f"{clean} is not in the allow-list" + ("" if self.allow else " (the allow-list is empty)"))

    def _fetch(self, url: str) -> tuple[int, str, bytes, str, bool]:
        import urllib.error
        import urllib.request  # here: it loads http.client and ssl, which only fetching agents need

        agent = self

        class CheckedRedirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):
                agent._check(urljoin(req.full_url, newurl))
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), CheckedRedirects())
        request = urllib.request.Request(url, headers={"User-Agent": "sunsetd-UnifiedWebAgent/1"})
        try:
            with opener.open(request, timeout=self.timeout_s) as resp:
                data = resp.read(self.max_bytes + 1)
                return resp.status, resp.headers.get_content_type(), data[: self.max_bytes], resp.url, \
                    len(data) > self.max_bytes
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get_content_type() if exc.headers else "", exc.read(self.max_bytes), url, False
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AgentError(f"fetching {url} failed: {reason}") from None

    def handle_allowed(self, body: Any) -> dict:
        """{url} -> whether it may be fetched, and the normalised URL."""
        url = body if isinstance(body, str) else field(body, "url", str)
        try:
            return {"url": self._check(url), "allowed": True}
        except BadRequest as exc:
            return {"url": url, "allowed": False, "reason": str(exc)}

    def handle_fetch(self, body: Any) -> dict:
        """{url, save_as?} -> status, content type, title, text, links; stored, and saved to a file if asked."""
        url = self._check(field(body, "url", str))
        status, ctype, data, final, truncated = self._fetch(url)
        page = {"url": url, "final_url": final, "status": status, "content_type": ctype, "bytes": len(data),
                "truncated": truncated, "title": "", "text": "", "links": []}
        if ctype in ("text/html", "application/xhtml+xml"):
            parser = _Page(final)
            parser.feed(data.decode("utf-8", "replace"))
            page.update(title=" ".join(parser.title.split()), text=" ".join(parser.text)[: self.max_text],
                        links=parser.links[:100])
        elif ctype.startswith("text/") or ctype in ("application/json", "application/xml"):
            page["text"] = data.decode("utf-8", "replace")[: self.max_text]
        self.call(MOS, "put", {"ns": self.NS, "key": url, "value": page}, timeout=2.0)
        save_as = field(body, "save_as", str, None)
        if save_as is not None:
            page["saved"] = self.call(FILES, "write", {"path": save_as, "content": data}, timeout=2.0)
        self.counters["fetched"] += 1
        self.counters["fetched_bytes"] += len(data)
        return page

    def handle_page(self, body: Any) -> dict:
        """{url} -> the stored page, if it was fetched."""
        url, _ = normalize_url(field(body, "url", str))
        got = self.call(MOS, "get", {"ns": self.NS, "key": url}, timeout=2.0)
        return {"url": url, "found": got["found"], "page": got["value"]}

    def handle_search(self, body: Any) -> dict:
        """{text} -> stored pages whose title or text has every word."""
        hits = self.call(MOS, "search", {"ns": self.NS, "text": field(body, "text", str)}, timeout=2.0)["hits"]
        return {"pages": [{"url": h["value"]["url"], "title": h["value"]["title"]} for h in hits]}

    def handle_allow_list(self, body: Any) -> list[str]:
        return [f"{s}://{h}:{p}{path}" for s, h, p, path in self.allow]
