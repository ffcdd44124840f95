#!/usr/bin/env python
"""Install optional text corpora from Debian packages (idempotent; writes a manifest).

  python scripts/install_corpora.py austen kjv            # or: all
  python scripts/install_corpora.py --list
  python scripts/install_corpora.py pydocs --data-root /data/corpora --verify

Corpora land in ``<data root>/<NAME>/`` (data root: ``--data-root``, else
``$TENSORCACHE_DATA``, else ``~/.cache/tensorcache/corpora``) with ``manifest.json``
(packages and versions, licence, files with sha256) and ``COPYRIGHT``. Rerunning with an
intact manifest does nothing. Needs ``apt-get`` and ``dpkg-deb`` (Debian/Ubuntu); run
``apt-get update`` (as root) once if apt cannot locate a package, or pass ``--deb-dir``
with pre-downloaded ``.deb`` files. See ``tensorcache/data/install.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tensorcache.data import corpora  # noqa: E402  pylint: disable=g-import-not-at-top
from tensorcache.data import install  # noqa: E402  pylint: disable=g-import-not-at-top


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="*", help=f"corpora: {', '.join(install.SPECS)} or all")
  parser.add_argument("--data-root", default=None,
                      help=f"default: ${corpora.DATA_ROOT_ENV} or ~/.cache/tensorcache/corpora")
  parser.add_argument("--force", action="store_true", help="reinstall even if intact")
  parser.add_argument("--verify", action="store_true",
                      help="recheck every file's sha256 before deciding it is intact")
  parser.add_argument("--deb-dir", default=None, help="use PKG_*.deb files from here first")
  parser.add_argument("--apt-update", action="store_true",
                      help="run `apt-get update` first (needs root)")
  parser.add_argument("--list", action="store_true", help="show corpora and install state")
  args = parser.parse_args(argv)

  root = args.data_root or corpora.default_data_root()
  if args.list or not args.names:
    for name, spec in install.SPECS.items():
      where = os.path.join(root, name)
      problems = install.manifest_problems(where) if os.path.isdir(where) else ["absent"]
      state = "installed" if not problems else "not installed"
      print(f"{name:8s} {state:14s} {', '.join(spec.packages):32s} {spec.description}")
    return 0 if args.list else 2

  names = list(install.SPECS) if args.names == ["all"] else args.names
  unknown = [n for n in names if n not in install.SPECS]
  if unknown:
    parser.error(f"unknown corpus {unknown}; choose from {', '.join(install.SPECS)} or all")
  if args.apt_update:
    subprocess.run(["apt-get", "update"], check=True)
  failed = []
  for name in names:
    try:
      install.install(name, root, force=args.force, verify=args.verify, deb_dir=args.deb_dir)
    except (install.InstallError, ImportError) as e:  # ImportError: an extra, with its pip command
      print(f"{name}: FAILED: {e}", file=sys.stderr)
      failed.append(name)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
