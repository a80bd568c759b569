"""Files written whole or not at all, and their digests: the bottom of the import graph (no project imports)."""

from fileio.atomic import atomic_write, write_json
from fileio.digest import sha256_file

__all__ = ["atomic_write", "sha256_file", "write_json"]
