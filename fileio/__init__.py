"""Files and directories written whole or not at all, and their digests.

The bottom of the import graph with ``config_check`` and ``scoring``: no project imports.
"""

from fileio.atomic import atomic_write, write_json
from fileio.digest import sha256_file
from fileio.output_dir import OutputDir

__all__ = ["OutputDir", "atomic_write", "sha256_file", "write_json"]
