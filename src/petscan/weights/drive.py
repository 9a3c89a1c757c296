"""Google Drive share links: file ids, direct-download URLs, the virus-scan interstitial.

Drive answers a large file's download with an HTML page ("can't scan this file for
viruses") whose form or link leads to the file; `gdrive_confirm_url` finds it. Only pages
of Drive's own hosts (`is_drive_host`) are searched for such a link (`drive_confirmation`).
"""

from __future__ import annotations

import html
import re
import urllib.parse
from html.parser import HTMLParser

DRIVE_HOSTS = {"drive.google.com", "docs.google.com", "drive.usercontent.google.com"}
DRIVE_SUFFIX = ".googleusercontent.com"  # doc-0s-...-docs.googleusercontent.com serves files


def is_drive_host(host: str | None) -> bool:
    """Google Drive's own hosts, the only ones whose HTML pages are parsed for a download
    link and between which a redirect may change host."""
    host = (host or "").lower()
    return host in DRIVE_HOSTS or host.endswith(DRIVE_SUFFIX)


def gdrive_file_id(url: str) -> str | None:
    """The file id of a Google Drive link (`/file/d/<id>/view`, `open?id=`, `uc?id=`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in DRIVE_HOSTS:
        return None
    match = re.search(r"/file/d/([0-9A-Za-z_-]+)", parts.path)
    if match:
        return match.group(1)
    ids = urllib.parse.parse_qs(parts.query).get("id")
    return ids[0] if ids else None


def normalize_url(url: str) -> str:
    """A direct-download URL: Drive `file/d/<id>/view` and `open?id=` links become
    `https://drive.google.com/uc?export=download&id=<id>`; other URLs are unchanged."""
    file_id = gdrive_file_id(url)
    parts = urllib.parse.urlsplit(url)
    if file_id is None or parts.hostname == "drive.usercontent.google.com":
        return url
    if parts.path.startswith("/uc"):
        query = urllib.parse.parse_qs(parts.query)
        if "confirm" in query:  # already past the interstitial
            return url
    return f"https://drive.google.com/uc?export=download&id={file_id}"


class _FormParser(HTMLParser):
    """Collects forms (action + hidden inputs) and link targets of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((attr.get("action", ""), {}))
        elif tag == "input" and self.forms and attr.get("name"):
            self.forms[-1][1][attr["name"]] = attr.get("value", "")
        elif tag == "a" and attr.get("href"):
            self.links.append(attr["href"])


def gdrive_confirm_url(page: str, base_url: str) -> str | None:
    """The real download URL behind a Google Drive "can't scan this file for viruses" page.

    Handles the current form (`<form action=".../download">` with hidden `id`, `confirm`,
    `uuid` inputs) and the older `href="/uc?export=download&confirm=XXXX&id=..."` link.
    Returns None when the page is no such interstitial (an error or quota page).
    """
    parser = _FormParser()
    parser.feed(page)
    for action, inputs in parser.forms:
        if "confirm" in inputs or "download" in action:
            target = urllib.parse.urljoin(base_url, html.unescape(action) or base_url)
            query = urllib.parse.urlencode(inputs)
            return f"{target}{'&' if '?' in target else '?'}{query}" if query else target
    for href in parser.links:
        if "confirm=" in href:
            return urllib.parse.urljoin(base_url, html.unescape(href))
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match:
        parts = urllib.parse.urlsplit(base_url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["confirm"] = match.group(1)
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return None


def drive_confirmation(page: str, page_url: str) -> str | None:
    """The download URL behind a Google Drive interstitial; None for any other page (the
    HTML of other hosts is never searched for links)."""
    if not is_drive_host(urllib.parse.urlsplit(page_url).hostname):
        return None
    return gdrive_confirm_url(page, page_url)


def html_title(page: str | bytes) -> str:
    """The `<title>` of an HTML page (or its first bytes), whitespace folded; "no title"."""
    if isinstance(page, bytes):
        page = page.decode("utf-8", errors="replace")
    match = re.search(r"<title[^>]*>(.*?)</title>", page, re.IGNORECASE | re.DOTALL)
    return " ".join(html.unescape(match.group(1)).split()) if match else "no title"
