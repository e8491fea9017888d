"""The sandbox image: its content-hash tag, and building it (offline base included) when missing.

The tag `sharpe-rl-sandbox:<12 hex>` hashes the Dockerfile, the pinned requirements, the harness
and the contract, so a checkout always runs the harness it contains and an experiment's cache key
changes whenever what runs inside changes. The base image is Debian bookworm made with
`debootstrap` and `docker import` (no image registry needed) and cached as `sharpe-rl-base:bookworm`.
Packages come from PyPI through the host's network and CA bundle; the torch CPU wheel comes from
the host's pip configuration (local disk on machines that keep it) or PyTorch's CPU index.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
import docker.errors

from sharpe_rl.sandbox import InfrastructureError

log = logging.getLogger(__name__)

SANDBOX_IMAGE_DIR = Path(__file__).resolve().parents[2] / "sandbox_image"
HARNESS_DIR = Path(__file__).resolve().parent
IMAGE_REPOSITORY = "sharpe-rl-sandbox"
BASE_IMAGE = "sharpe-rl-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "libgomp1", "ca-certificates")
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ENGINE_HINT = "start one with `sudo dockerd &` (or point DOCKER_HOST at one), or use --executor process"


#: What runs inside every sandbox: the trusted harness, the experiment's process, their pipe protocol,
#: and the contract they share with the host.
HARNESS_FILES = {name: HARNESS_DIR / name for name in ("harness.py", "worker.py", "protocol.py", "contract.py")}


def image_inputs() -> dict[str, Path]:
    """The files whose content defines the image (and therefore its tag)."""
    return {
        "Dockerfile": SANDBOX_IMAGE_DIR / "Dockerfile",
        "requirements.txt": SANDBOX_IMAGE_DIR / "requirements.txt",
        **HARNESS_FILES,
    }


def harness_hash() -> str:
    """12 hex digits of SHA-256 over the image inputs: what runs inside the sandbox."""
    digest = hashlib.sha256()
    for name, path in sorted(image_inputs().items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def image_tag() -> str:
    """The tag of the sandbox image built from this checkout."""
    return f"{IMAGE_REPOSITORY}:{harness_hash()}"


def docker_client() -> docker.DockerClient:
    """A client of a Docker engine that answers, or InfrastructureError saying how to get one."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        raise InfrastructureError(f"no Docker engine reachable ({exc}): {ENGINE_HINT}") from exc
    return client


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_image(client: docker.DockerClient | None = None, *, force: bool = False) -> str:
    """Return the sandbox image tag, building the image (and its base) only when missing."""
    client = client or docker_client()
    tag = image_tag()
    if image_exists(client, tag) and not force:
        log.info("sandbox image %s is up to date", tag)
        return tag
    _ensure_base(client)
    with tempfile.TemporaryDirectory(prefix="sharpe-rl-image-") as context:
        pip_extra_args = _assemble_context(Path(context))
        _build(client, Path(context), tag, pip_extra_args)
    return tag


def _ensure_base(client: docker.DockerClient) -> None:
    """Make the Debian base with debootstrap and import it, unless it is already there."""
    if image_exists(client, BASE_IMAGE):
        return
    if os.geteuid() != 0:
        raise InfrastructureError(
            f"building the base image {BASE_IMAGE} runs debootstrap, which needs root: "
            "run `sudo .venv/bin/python sandbox_image/build.py` once"
        )
    if shutil.which("debootstrap") is None:
        raise InfrastructureError("debootstrap is not installed: `apt-get install debootstrap`, then build again")
    mirror = debian_mirror()
    log.info("building the base image %s with debootstrap from %s (about a minute)", BASE_IMAGE, mirror)
    with tempfile.TemporaryDirectory(prefix="sharpe-rl-base-") as workdir:
        root = Path(workdir) / "root"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(root),
                mirror,
            ]
        )
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / leftovers).glob("*"):
                if path.is_file():
                    path.unlink()
        tarball = Path(workdir) / "root.tar"
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."])
        repository, tag = BASE_IMAGE.split(":")
        try:
            client.api.import_image_from_file(
                str(tarball),
                repository=repository,
                tag=tag,
                changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            )
        except docker.errors.APIError as exc:
            raise InfrastructureError(f"docker import of the base image failed: {exc}") from exc


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (so its proxy setup applies), or the default one."""
    pattern = re.compile(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?\s*", re.MULTILINE)
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if source.is_file() and source.suffix in {".list", ".sources", ""}:
            match = pattern.search(source.read_text(errors="replace"))
            if match:
                return match.group(1)
    return DEFAULT_DEBIAN_MIRROR


def _assemble_context(context: Path) -> str:
    """Copy the image inputs, the CA bundle and a local torch wheel into `context`.

    Returns the extra pip arguments the build needs: PyTorch's CPU index when no local wheel exists.
    """
    for name, path in image_inputs().items():
        shutil.copyfile(path, context / name)
    shutil.copyfile(_ca_bundle(), context / "ca-certificates.crt")
    wheels = context / "wheels"
    wheels.mkdir()
    torch_pin = next(
        line.strip()
        for line in (SANDBOX_IMAGE_DIR / "requirements.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    # The host's pip configuration knows where a local CPU wheel lives (find-links, a local index).
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), torch_pin],
        capture_output=True,
        text=True,
    )
    if download.returncode == 0:
        log.info("using the local wheel for %s", torch_pin)
        return ""
    log.info("no local wheel for %s; the build will use %s", torch_pin, TORCH_CPU_INDEX)
    return f"--extra-index-url {TORCH_CPU_INDEX}"


def _ca_bundle() -> Path:
    """The CA bundle pip on this host trusts (a TLS-intercepting proxy's CA included)."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    import certifi  # installed with the docker SDK's requests

    return Path(certifi.where())


def _build(client: docker.DockerClient, context: Path, tag: str, pip_extra_args: str) -> None:
    log.info("building %s (pip install of the pinned packages takes a few minutes the first time)", tag)
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            network_mode="host",
            buildargs={"BASE_IMAGE": BASE_IMAGE, "PIP_EXTRA_ARGS": pip_extra_args},
            labels={"sharpe-rl.image": "sandbox"},
            rm=True,
            forcerm=True,
            decode=True,
        )
        recent: list[str] = []
        for chunk in stream:
            if "error" in chunk:
                tail = "".join(recent[-20:])
                raise InfrastructureError(f"building {tag} failed: {chunk['error'].strip()}\n{tail}")
            line = chunk.get("stream", "")
            if line.strip():
                recent.append(line)
                log.info("%s", line.rstrip())
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"building {tag} failed: {exc}") from exc


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise InfrastructureError(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stderr[-2000:]}")
