"""Hub downloads that resume: model files (GGUF) and a student's checkpoint, with their progress as events.

A multi-GB model over a home connection gets interrupted. huggingface_hub (1.x) restarts an
interrupted file from its first byte; here a file grows in ``NAME.part`` beside its final place, a
new attempt asks the server for the rest (an HTTP range), and the file is renamed into place only
when its size and its digest match what the Hub announced (the ETag of an LFS file is its sha256, of a
git file its git blob sha1): a damaged partial file once resumed into a file of the right size and
the wrong content, served from the cache from then on. A file whose digest does not match is deleted
and fetched once more from its first byte. The Hub's own cache is still read first, so a file
downloaded by other tools is not fetched twice. Offline (``HF_HUB_OFFLINE=1``, or no route to the
Hub), a file that is in neither cache is one line of error.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.events import DownloadProgress, Emit

PROGRESS_EVERY_S = 0.5
BLOCK = 1 << 20


def cache_root() -> Path:
    base = os.environ.get("DEEPDISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "deepdistill-tui")
    return Path(base)


def _target(repo: str, filename: str) -> Path:
    return cache_root() / "hub" / repo.replace("/", "--") / filename


def cached_file(repo: str, filename: str) -> Path | None:
    """The file if it is complete in this project's cache or the Hub's; never touches the network."""
    ours = _target(repo, filename)
    if ours.is_file():
        return ours
    try:
        from huggingface_hub import try_to_load_from_cache

        theirs = try_to_load_from_cache(repo, filename)
    except Exception:  # an old or missing hub client: just "not present"
        return None
    return Path(theirs) if isinstance(theirs, str) else None


def hub_file(repo: str, filename: str, emit: Emit) -> Path:
    """The file, from a cache or downloaded (resuming a partial download)."""
    present = cached_file(repo, filename)
    if present is not None:
        return present
    name = f"{repo}:{filename}"
    if _offline():
        raise DeepDistillError(f"{name} is not in the local Hub cache and the Hub cannot be reached "
                               "(offline, HF_HUB_OFFLINE is set); download it once with a network")
    url, size, etag = _metadata(repo, filename, name)
    target = _target(repo, filename)
    _download_verified(url, size, etag, target, name, emit)
    return target


def cached_snapshot(repo: str) -> Path | None:
    """The folder ``hub_snapshot`` completed for ``repo``, if it did."""
    folder = _target(repo, "")
    return folder if (folder / ".complete").is_file() else None


def hub_snapshot(repo: str, patterns: Iterable[str], emit: Emit) -> Path:
    """The repository's files that match ``patterns``, in one folder of this project's cache (what
    ``from_pretrained`` loads a student from)."""
    present = cached_snapshot(repo)
    if present is not None:
        return present
    folder = _target(repo, "")
    if _offline():
        raise DeepDistillError(f"{repo} is not in the local cache and the Hub cannot be reached "
                               "(offline, HF_HUB_OFFLINE is set); download it once with a network")
    files = [f for f in _repo_files(repo) if any(fnmatch(f, p) for p in patterns)]
    if not files:
        raise DeepDistillError(f"{repo} has no files matching {', '.join(patterns)}")
    for filename in files:
        target = folder / filename
        if not target.is_file():
            url, size, etag = _metadata(repo, filename, f"{repo}:{filename}")
            _download_verified(url, size, etag, target, f"{repo}:{filename}", emit)
    (folder / ".complete").write_text("\n".join(files) + "\n")
    return folder


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _unreachable(name: str, exc: BaseException) -> DeepDistillError:
    return DeepDistillError(f"{name} is not in the local Hub cache and the Hub cannot be reached "
                            f"({type(exc).__name__}); download it once with a network")


def _metadata(repo: str, filename: str, name: str) -> tuple[str, int | None, str | None]:
    """(URL to GET, size in bytes, ETag) from the Hub's HEAD, which also checks that the file exists."""
    import httpx
    from huggingface_hub import errors, get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, filename)
    try:
        meta = get_hf_file_metadata(url)
    except (errors.RepositoryNotFoundError, errors.EntryNotFoundError, errors.RevisionNotFoundError):
        raise DeepDistillError(f"{name} does not exist on the Hub (check the repository and file name)") \
            from None
    except errors.GatedRepoError:
        raise DeepDistillError(f"{name} is gated: accept its licence on the Hub and log in "
                               "(hf auth login)") from None
    except (httpx.TransportError, errors.OfflineModeIsEnabled, OSError) as exc:
        raise _unreachable(name, exc) from None
    return url, meta.size, meta.etag


def _repo_files(repo: str) -> list[str]:
    import httpx
    from huggingface_hub import HfApi, errors

    try:
        return list(HfApi().list_repo_files(repo))
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
        raise DeepDistillError(f"{repo} does not exist on the Hub") from None
    except (httpx.TransportError, OSError) as exc:
        raise _unreachable(repo, exc) from None


def digest_matches(path: Path, etag: str | None, size: int) -> bool | None:
    """Does the file match the Hub's ETag? None when the ETag is no digest we know (then only the
    size is checked): 64 hex digits are an LFS file's sha256, 40 a git file's blob sha1."""
    etag = (etag or "").lower()
    if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag):
        h = hashlib.sha256()
    elif len(etag) == 40 and all(c in "0123456789abcdef" for c in etag):
        h = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    else:
        return None
    with path.open("rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    return h.hexdigest() == etag


def _download_verified(url: str, size: int | None, etag: str | None, target: Path, name: str,
                       emit: Emit) -> None:
    """``_download``, then the digest: a mismatch deletes the file and fetches it once more whole."""
    part = target.with_name(target.name + ".part")
    for attempt in (1, 2):
        _download(url, size, part, name, emit)
        if digest_matches(part, etag, part.stat().st_size) is not False:
            os.replace(part, target)
            return
        part.unlink()
        if attempt == 2:
            raise DeepDistillError(f"download of {name} does not match the Hub's digest {etag} twice;"
                                   " the file was deleted")


def _download(url: str, size: int | None, part: Path, name: str, emit: Emit) -> None:
    """GET the rest of ``part`` (a range request) until it holds ``size`` bytes."""
    import httpx
    from huggingface_hub.utils import build_hf_headers

    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {**build_hf_headers(), **({"Range": f"bytes={have}-"} if have else {})}
    meter = _Meter(name, size, have, emit)
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as response:
            if response.status_code not in (200, 206):
                raise DeepDistillError(f"cannot download {name}: HTTP {response.status_code}")
            if have and response.status_code == 200:  # the server ignored the range: start over
                have = 0
                meter.restart()
            with part.open("ab" if have else "wb") as out:
                for block in response.iter_bytes(BLOCK):
                    out.write(block)
                    meter.add(len(block))
    except httpx.TransportError as exc:
        raise DeepDistillError(f"download of {name} stopped ({type(exc).__name__}) with "
                               f"{part.stat().st_size if part.exists() else 0} bytes kept; run again "
                               "to resume") from None
    got = part.stat().st_size
    if size is not None and got != size:
        raise DeepDistillError(f"download of {name} ended at {got} of {size} bytes; run again to resume")
    meter.finish()


class _Meter:
    """Bytes so far, this attempt's rate and the time left, as events at most every PROGRESS_EVERY_S."""

    def __init__(self, name: str, total: int | None, done: int, emit: Emit) -> None:
        self.name, self.total, self.done, self.emit = name, total, done, emit
        self.start_bytes, self.start = done, time.monotonic()
        self.last = 0.0

    def restart(self) -> None:
        self.done = self.start_bytes = 0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self._report(False)

    def finish(self) -> None:
        self._report(True)

    def _report(self, finished: bool) -> None:
        elapsed = time.monotonic() - self.start
        rate = (self.done - self.start_bytes) / elapsed if elapsed > 0 else None
        eta = (self.total - self.done) / rate if rate and self.total else None
        self.emit(DownloadProgress(self.name, self.done, self.total, rate, eta, finished))
