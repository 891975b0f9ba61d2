"""Study storage that may be a bucket: `s3://`, `gs://` URIs or a local (shared) path.

raykd runs a study in a local working folder and mirrors it to the bucket (after each trial
and at the end); `--resume` and `raykd best/retrain/export` bring it back. Every call here
also takes a plain local path, so callers need no branch of their own for the common case.

S3 endpoints: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (the AWS SDKs' standard variables)
point raykd at any S3-compatible server (MinIO, Ceph, a test's moto server).
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SCHEMES = ("s3", "gs", "gcs")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def is_uri(path: str | Path) -> bool:
    """True for `scheme://...` (a str only: a Path has already lost its `//`)."""
    return isinstance(path, str) and _URI.match(path) is not None


def check_uri(value: str, key: str | None = None) -> str:
    """A supported URI, normalised (no trailing slash, a bucket named); ValueError naming `key` else."""
    m = _URI.match(value)
    if m is None:
        return value
    scheme, rest = m.group(1).lower(), m.group(2).strip("/")
    where = f"{key}: " if key else ""
    if scheme not in SCHEMES:
        raise ValueError(f"{where}unsupported scheme {scheme}:// in {value!r} (use a local path, s3:// or gs://)")
    if not rest or rest.startswith("/"):
        raise ValueError(f"{where}{value!r} names no bucket (expected {scheme}://bucket/prefix)")
    return f"{scheme}://{rest}"


def join(base: str | Path, *parts: str) -> str | Path:
    """base/part/...: a URI stays a str URI, a local path stays a Path."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])
    return Path(base).joinpath(*parts)


def filesystem(path: str | Path) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).resolve())
    scheme, rest = _URI.match(str(path)).groups()
    scheme = scheme.lower()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if scheme == "s3" and endpoint:
        # An explicit endpoint: no region lookup against AWS (from_uri would ask it).
        m = re.match(r"^(https?)://(.*)$", endpoint)
        fs = pafs.S3FileSystem(endpoint_override=m.group(2) if m else endpoint, scheme=m.group(1) if m else "https",
                               region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                               or "us-east-1")
        return fs, rest.strip("/")
    fs, inner = pafs.FileSystem.from_uri(f"{'gs' if scheme == 'gcs' else scheme}://{rest}")
    return fs, inner.rstrip("/")


def _info(path: str | Path) -> Any:
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    return fs, inner, fs.get_file_info(inner), pafs.FileType


def exists(path: str | Path) -> bool:
    """A file or a folder (a bucket prefix with objects under it) is there."""
    _, _, info, kind = _info(path)
    return info.type != kind.NotFound


def is_file(path: str | Path) -> bool:
    _, _, info, kind = _info(path)
    return info.type == kind.File


def read_text(path: str | Path) -> str:
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read().decode()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def write_text(path: str | Path, text: str) -> None:
    fs, inner = filesystem(path)
    if not is_uri(path):
        Path(inner).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


def _tree(fs: Any, root: str) -> dict[str, Any]:
    """Relative path -> FileInfo of every file under root (empty when root is missing)."""
    import pyarrow.fs as pafs

    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root):].lstrip("/"): i for i in infos if i.type == pafs.FileType.File}


UPLOADED = ".raykd-uploaded.json"  # in the local folder: what upload_dir last copied, and its stat


def upload_dir(local: str | Path, dest: str | Path) -> int:
    """Mirror a local folder to `dest`, copying only files new or changed since this folder's
    last upload (size and mtime, kept in UPLOADED), so the per-trial sync of a growing study
    stays cheap. Returns the number of files copied."""
    import json

    import pyarrow.fs as pafs

    local = Path(local)
    if not is_uri(dest):
        if Path(dest).resolve() != local.resolve():
            shutil.copytree(local, dest, dirs_exist_ok=True)
        return -1
    fs, root = filesystem(dest)
    have = _tree(fs, root)
    record = local / UPLOADED
    done = json.loads(record.read_text()) if record.is_file() else {}
    copied = 0
    for src in sorted(p for p in local.rglob("*") if p.is_file() and p.name != UPLOADED):
        rel = src.relative_to(local).as_posix()
        st = src.stat()
        if rel in have and done.get(rel) == [st.st_size, st.st_mtime_ns]:
            continue
        pafs.copy_files(str(src), f"{root}/{rel}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
        done[rel] = [st.st_size, st.st_mtime_ns]
        copied += 1
    record.write_text(json.dumps(done))
    return copied


def download_dir(src: str | Path, local: str | Path) -> Path:
    """Copy a folder (or one file) at `src` into the local folder `local`; FileNotFoundError if absent."""
    import pyarrow.fs as pafs

    local = Path(local)
    fs, root = filesystem(src)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{src}: no such file or folder")
    local.mkdir(parents=True, exist_ok=True)
    if info.type == pafs.FileType.File:
        target = local / Path(root).name
        pafs.copy_files(root, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return target
    for rel in _tree(fs, root):
        if rel.rsplit("/", 1)[-1] == UPLOADED:
            continue
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(f"{root}/{rel}", str(local / rel), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
    return local


def pull_study(remote: str, local: Path, resume: bool) -> None:
    """Before a study on a bucket: --resume starts from the bucket's copy; a new study refuses
    one the bucket already has, and starts from an empty working folder (it is only a cache)."""
    from raykd.errors import UserError

    there = exists(join(remote, "tune"))
    if resume and there:
        download_dir(remote, local)
    elif there:
        raise UserError(f"study {remote} already exists: resume it with --resume, or pick another name "
                        "with --set name=...")
    elif not resume and Path(local).exists():
        shutil.rmtree(local)


@contextmanager
def local_copy(path: str | Path, parts: list[str]) -> Iterator[Path]:
    """A local folder holding `parts` (files or folders, relative) of `path`: the path itself
    when it is local, else a temp dir they were downloaded to (missing parts are skipped)."""
    import tempfile

    if not is_uri(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="raykd-") as tmp:
        for part in parts:
            src = join(path, part)
            if exists(src):
                download_dir(src, (Path(tmp) / part) if not is_file(src) else (Path(tmp) / part).parent)
        yield Path(tmp)
