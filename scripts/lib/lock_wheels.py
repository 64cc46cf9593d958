"""lock_wheels.py LOCK CACHE OUT: copy into OUT the wheels of CACHE whose SHA-256 LOCK names.

pip download fills CACHE with what every lock asked for over time; a build takes only the exact
files its own lock pins (by hash), so nothing else can slip in. Used by scripts/image and
scripts/release.
"""

import hashlib
import pathlib
import re
import shutil
import sys

lock, cache, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
hashes = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", pathlib.Path(lock).read_text()))
for wheel in sorted(cache.glob("*.whl")):
    if hashlib.sha256(wheel.read_bytes()).hexdigest() in hashes:
        shutil.copy2(wheel, out / wheel.name)
