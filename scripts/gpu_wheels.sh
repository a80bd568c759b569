#!/usr/bin/env bash
# Prepare, on a machine with a package index, the wheels that scripts/gpu_check.sh needs on an offline GPU
# machine: what requirements.txt (and the check's pytest) asks for beyond the GPU image's own packages,
# with their dependencies, for CPython 3.12 on manylinux x86-64. Carry the folder in the checkout.
#   bash scripts/gpu_wheels.sh                      # -> .gpu_wheels/ (git-ignored), prints names and sizes
#   GPU_PACKAGES=my_image.txt bash scripts/gpu_wheels.sh   # another image (see scripts/gpu_image_packages.txt)
#   WHEELS=dir GPU_PYTHON=3.12 bash scripts/gpu_wheels.sh
# flash-attn is never fetched: it is a long source build, and the check runs the torch varlen and SDPA
# backends. Exit 2 when a wheel cannot be found or the folder would exceed 64 MB (the device transfer limit).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" - "${WHEELS:-.gpu_wheels}" "${GPU_PACKAGES:-scripts/gpu_image_packages.txt}" "${GPU_PYTHON:-3.12}" <<'PYEOF'
import email.parser, os, re, subprocess, sys, zipfile

wheels, image_list, pyver = sys.argv[1:4]
LIMIT_MB = 64
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement

image = {norm(line.split("==")[0].strip()) for line in open(image_list) if line.strip() and not line.startswith("#")}
wanted = []
for fname in ("requirements.txt",):
    for line in open(fname):
        line = line.split("#", 1)[0].strip()
        if line:
            wanted.append(Requirement(line))
wanted.append(Requirement("pytest"))  # the check's tests stage
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
os.makedirs(wheels, exist_ok=True)
abi = "cp" + pyver.replace(".", "")
done: dict[str, str] = {}
queue = [r for r in wanted if norm(r.name) not in image and norm(r.name) != "flash-attn"]
while queue:
    req = queue.pop(0)
    name = norm(req.name)
    if name in done or name in image:
        continue
    before = set(os.listdir(wheels))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", pyver, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
           "--abi", "none", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", wheels, str(req)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"gpu_wheels: no wheel of {req} for CPython {pyver} manylinux x86-64: "
                 f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    new = sorted(set(os.listdir(wheels)) - before)
    match = [f for f in sorted(os.listdir(wheels)) if f.endswith(".whl") and norm(f.split("-")[0]) == name]
    if not match:
        sys.exit(f"gpu_wheels: pip downloaded {new or 'nothing'} for {req}, none of them a wheel of {req.name}")
    done[name] = match[-1]
    with zipfile.ZipFile(os.path.join(wheels, match[-1])) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    for dep in msg.get_all("Requires-Dist") or []:
        d = Requirement(dep)
        if d.marker is not None and not d.marker.evaluate(env):
            continue  # an extra, or another platform/Python
        if norm(d.name) not in image and norm(d.name) not in done:
            queue.append(d)
total = 0
print(f"gpu_wheels: {wheels} (CPython {pyver}, manylinux x86-64), beyond the {len(image)} packages of {image_list}:")
for name, f in sorted(done.items()):
    size = os.path.getsize(os.path.join(wheels, f))
    total += size
    print(f"  {f}  {size / 1e6:.2f} MB")
print(f"  total {total / 1e6:.2f} MB")
if total > LIMIT_MB * 1e6:
    sys.exit(f"gpu_wheels: {total / 1e6:.1f} MB is over {LIMIT_MB} MB, what one device transfer may carry")
PYEOF
