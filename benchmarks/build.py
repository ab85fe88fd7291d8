"""Image build benchmark, measured side by side in one run on the local engine.

Run: python benchmarks/build.py   (needs the engine and the base image: bash ci/bootstrap.sh)
Prints: cold build (no cache) vs warm rebuild after touching one app source file, and their ratio
(goal <= 0.1); runtime image size vs a naive single-stage Dockerfile of the same app (goal <= 0.6);
runtime overhead over the base image in MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from conveyor import config  # noqa: E402

# The same app, built the way a first Dockerfile usually is: one stage with the build toolchain kept,
# the whole context copied, pip's cache left in the layer.
NAIVE = """\
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y gcc python3-dev
WORKDIR /srv/app
COPY . .
RUN --mount=type=secret,id=ca if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \\
    python3 -m venv /opt/venv \\
    && /opt/venv/bin/pip install -r app/requirements.lock
ENV PATH=/opt/venv/bin:$PATH
CMD ["python", "-m", "app", "serve"]
"""


def docker_build(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["docker", "buildx", "build", "--load", "--quiet", *args],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def size(ref: str) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Size}}", ref], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def main() -> None:
    base = config.load(ROOT, environ=os.environ).image.base_image
    ca = os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    common = ["--build-arg", f"BASE_IMAGE={base}", "--secret", f"id=ca,src={ca}"]
    runtime = ["-f", "app/Dockerfile", "--target", "runtime", *common]
    cold = docker_build([*runtime, "--no-cache", "-t", "bench-runtime:cold", "."])
    touched = ROOT / "app" / "settings.py"
    original = touched.read_text()
    try:
        touched.write_text(original + f"\n# touched by benchmarks/build.py at {time.time()}\n")
        warm = docker_build([*runtime, "-t", "bench-runtime:warm", "."])
    finally:
        touched.write_text(original)
    with tempfile.TemporaryDirectory() as tmp:
        naive_file = Path(tmp) / "Dockerfile.naive"
        naive_file.write_text(NAIVE)
        docker_build(["-f", str(naive_file), *common, "-t", "bench-naive:latest", "."])
    ours, naive, base_size = size("bench-runtime:warm"), size("bench-naive:latest"), size(base)
    print(f"base image              : {base}")
    print(f"cold build (--no-cache) : {cold:6.1f} s")
    print(f"warm rebuild (1 file)   : {warm:6.1f} s")
    print(f"warm / cold             : {warm / cold:.3f}  (goal <= 0.1)")
    print(f"runtime image           : {ours / 1e6:6.1f} MB")
    print(f"naive single-stage image: {naive / 1e6:6.1f} MB")
    print(f"runtime / naive         : {ours / naive:.2f}  (goal <= 0.6)")
    print(f"overhead over base      : {(ours - base_size) / 1e6:6.1f} MB")


if __name__ == "__main__":
    main()
