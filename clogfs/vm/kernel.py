"""The stock Debian kernel the QEMU harness boots: resolving, downloading and unpacking it.

Everything is cached under ``<repo>/.cache/kernel/`` and every step is idempotent: the
``linux-image-amd64`` metapackage names the current ABI (``6.1.0-NN-amd64``, which changes
with security updates), ``apt-get download`` fetches that package (it is never installed on
the host), ``dpkg -x`` unpacks it and ``busybox depmod`` writes the ``modules.dep`` the
package does not ship. See ``spec/kernel-vm.md``.

Test and demo tooling: it runs host commands, so it is not a core module.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

METAPACKAGE = "linux-image-amd64"
# The generic flavour: the -cloud-amd64 kernel lacks 9p (kernel-vm.md).
_IMAGE_PACKAGE = re.compile(r"^\s*Depends:\s*linux-image-(\d+\.\d+\.\d+-\d+-amd64)\s*$", re.M)

# The order of kernel-vm.md. Dependencies found in modules.dep are loaded first anyway.
REQUIRED_MODULES: tuple[str, ...] = (
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_ring",
    "virtio",
    "virtio_pci",
    "9pnet",
    "9pnet_virtio",
    "netfs",
    "fscache",
    "9p",
    "dm-mod",
    "dm-log",
    "dm-region-hash",
    "dm-mirror",
    "dm-log-userspace",
    "loop",
)
# Loaded when the kernel ships them: dm-flakey fails a log device on demand (the `error`
# target is built into dm-mod); fuse lets clogfsd mount its view in the guest.
OPTIONAL_MODULES: tuple[str, ...] = ("dm-flakey", "fuse")


class KernelPrepareError(RuntimeError):
    """A step of fetching or unpacking the kernel failed (a test failure, never a skip)."""


@dataclass(frozen=True)
class KernelTree:
    """An unpacked kernel package.

    Attributes:
        version: the kernel release, e.g. ``6.1.0-56-amd64``.
        root: the directory ``dpkg -x`` unpacked into.
        vmlinuz: the bootable image.
        modules: ``.ko`` paths in load order (dependencies before their users).
    """

    version: str
    root: Path
    vmlinuz: Path
    modules: tuple[Path, ...]


def default_cache_dir() -> Path:
    """``<repo>/.cache/kernel``, the repository being the one this package lives in."""
    return Path(__file__).resolve().parents[2] / ".cache" / "kernel"


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run a host command and return its stdout.

    Raises:
        KernelPrepareError: the command is missing or exits non-zero.
    """
    log.debug("running %s", " ".join(argv))
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelPrepareError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise KernelPrepareError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def resolve_version() -> str:
    """Ask apt which kernel ABI ``linux-image-amd64`` currently depends on.

    Runs ``apt-get update`` once if the package lists do not know the metapackage.

    Returns:
        The release string, e.g. ``6.1.0-56-amd64``.

    Raises:
        KernelPrepareError: apt does not name a generic amd64 kernel.
    """
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", METAPACKAGE])
        except KernelPrepareError:
            out = ""
        found = _IMAGE_PACKAGE.search(out)
        if found:
            return found.group(1)
        if attempt == 0:
            log.info("apt does not know %s yet: running apt-get update", METAPACKAGE)
            _run(["apt-get", "update", "-qq"])
    raise KernelPrepareError(f"apt-cache depends {METAPACKAGE} names no linux-image-*-amd64")


def _download(version: str, cache: Path) -> Path:
    """Return the cached ``.deb`` of ``linux-image-<version>``, downloading it if needed."""
    package = f"linux-image-{version}"
    existing = sorted(cache.glob(f"{package}_*_amd64.deb"))
    if existing:
        return existing[-1]
    partial = cache / "download.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log.info("downloading %s (about 70 MB)", package)
    _run(["apt-get", "download", "-q", package], cwd=partial)
    debs = sorted(partial.glob(f"{package}_*_amd64.deb"))
    if not debs:
        raise KernelPrepareError(f"apt-get download {package} produced no .deb")
    target = cache / debs[-1].name
    debs[-1].rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


def _unpack(deb: Path, version: str, cache: Path) -> Path:
    """``dpkg -x`` the package into ``cache/<version>`` (once) and generate ``modules.dep``."""
    root = cache / version
    stamp = root / ".unpacked"
    if stamp.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    partial = cache / f"{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    log.info("unpacking %s", deb.name)
    _run(["dpkg", "-x", str(deb), str(partial)])
    # modules.dep is not shipped in the .deb (kernel-vm.md).
    _run(["busybox", "depmod", "-b", str(partial), version])
    partial.rename(root)
    stamp.touch()
    return root


def parse_modules_dep(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Parse ``modules.dep``: module name → (its path, the paths it depends on).

    Names are normalised the way the kernel does (``-`` and ``_`` are the same).
    """
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep:
            continue
        table[module_name(path)] = (path.strip(), tuple(deps.split()))
    return table


def module_name(path: str) -> str:
    """``kernel/drivers/md/dm-mod.ko[.xz]`` → ``dm_mod``."""
    base = os.path.basename(path.strip())
    return base.split(".ko", 1)[0].replace("-", "_")


def load_order(
    dep_table: dict[str, tuple[str, tuple[str, ...]]],
    required: Iterable[str],
    optional: Iterable[str] = (),
) -> list[str]:
    """Module paths in load order: each module after everything it depends on.

    Args:
        dep_table: as returned by :func:`parse_modules_dep`.
        required: names that must exist, in the wanted order.
        optional: names loaded only if the kernel ships them.

    Raises:
        KernelPrepareError: a required module (or a dependency) is missing. Modules built
            into the kernel do not appear in modules.dep; callers list only loadable ones.
    """
    by_path = {path: name for name, (path, _) in dep_table.items()}
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key not in dep_table:
            raise KernelPrepareError(f"module {name} not in modules.dep (via {trail})")
        path, deps = dep_table[key]
        if path in order:
            return
        for dep in deps:
            visit(by_path.get(dep, module_name(dep)), (*trail, name))
        order.append(path)

    for name in required:
        visit(name, ())
    for name in optional:
        if name.replace("-", "_") in dep_table:
            visit(name, ())
    return order


def prepare_kernel(cache: Path | None = None) -> KernelTree:
    """Make sure the current Debian kernel is downloaded and unpacked; idempotent.

    Args:
        cache: the cache directory; default :func:`default_cache_dir`.

    Returns:
        The unpacked kernel with its module load order.

    Raises:
        KernelPrepareError: apt, dpkg or depmod failed, or a needed module is missing.
    """
    cache = cache or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    version = resolve_version()
    root = _unpack(_download(version, cache), version, cache)
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise KernelPrepareError(f"{vmlinuz} missing from the package")
    moddir = root / "lib" / "modules" / version
    table = parse_modules_dep((moddir / "modules.dep").read_text())
    paths = load_order(table, REQUIRED_MODULES, OPTIONAL_MODULES)
    return KernelTree(version, root, vmlinuz, tuple(moddir / p for p in paths))
