"""fedlocal on a lent GPU machine (issue 17), prepared here, run there in one command.

Here (a machine with the registries)::

    python -m bench.gpu_check prepare

downloads flwr 1.39.0 and every requirement of it that the GPU machine's image lacks (or
whose version there flwr bounds) as CPython 3.12 manylinux wheels, checks that the set is
closed (each wheel's ``Requires-Dist`` is carried or in the image's package list, from the
device tool's KINDS.md), and packs them into ``.whl/wheels-cp312.tar.xz``; Fashion-MNIST
(raw IDX) and tiny Shakespeare go into ``.gpudata/data.tar.xz``. Both folders are
git-ignored (``.git/info/exclude``) and travel with ``carry: [".whl", ".gpudata"]``. The
wheels are repacked uncompressed inside the xz archive (xz packs them far smaller than
zip does), Ray's without its Java jars, the libraries fedlocal never loads (RLlib, Serve,
Tune, Train, Data, LLM) and the dashboard's web pages (74 MB as a wheel): 30 MiB for all
44 wheels, 26 MiB for the data, 61 MiB with the repository, against the device tool's
64 MiB for everything that travels. ``prepare`` prints the total and refuses more than
63 MiB (``--fmnist-train N`` carries fewer training images).

There (``bash bench/gpu_check.sh``, which calls the steps below one at a time, each
under ``timeout``, and writes ``$OUT/gpu_check.log`` and ``$OUT/gpu_results.md``)::

    python -m bench.gpu_check env       # versions, CUDA, what Ray sees
    python -m bench.gpu_check sim       # Flower's simulation (Ray), clients on a GPU share
    python -m bench.gpu_check deploy    # SuperLink + 2 SuperNodes, warm workers on the GPU
    python -m bench.gpu_check compare   # FedAvg on digits: CUDA against CPU
    python -m bench.gpu_check report    # gpu_results.md / .json from the steps' results

Each step writes ``<work>/<step>.json`` (``--work``, default ``$GPU_CHECK_WORK`` or
/tmp/gpu-check) and exits non-zero when a check fails. ``--device cpu`` runs the same
checks on the CPU (a dry run on a machine without a GPU; ``cuda`` metrics must then be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR, DATA_DIR = REPO / ".whl", REPO / ".gpudata"
WHEELS_BUNDLE = WHEEL_DIR / "wheels-cp312.tar.xz"
DATA_BUNDLE = DATA_DIR / "data.tar.xz"
DOWNLOADS = Path(os.environ.get("GPU_CHECK_DOWNLOADS", "/tmp/fedlocal-gpu-wheels"))
TRAVEL_LIMIT = 64 * 2**20  # the device tool's limit on the working tree that travels

# flwr 1.39.0 and the requirements (transitively) that the image lacks, at the versions
# `pip list` shows on the development machines. The image has click, typer, rich,
# packaging, protobuf, pathspec, requests and typing-extensions, but in versions nobody
# has read there while flwr bounds them (typer<0.21, rich<15, packaging<26, protobuf<7,
# ...; pydantic needs typing-extensions>=4.14.1): these travel too, small and pure Python
# except protobuf. grpcio stays the image's: grpcio-health-checking 1.70.0 is flwr's
# floor and, like flwr's own gRPC stubs, asks for grpcio >= 1.70 only.
WHEELS = [
    "flwr==1.39.0", "alembic==1.20.1", "annotated-types==0.7.0", "cffi==2.0.0",
    "cryptography==46.0.7", "fastapi==0.138.2", "greenlet==3.5.6",
    "grpcio-health-checking==1.70.0", "httptools==0.9.0", "iterators==0.0.2",
    "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "mako==1.4.3",
    "prompt-toolkit==3.0.52", "pycparser==3.0", "pycryptodome==3.24.1", "pydantic==2.13.4",
    "pydantic-core==2.46.4", "python-dotenv==1.2.2", "referencing==0.37.0", "rpds-py==0.30.0",
    "sqlalchemy==2.1.9", "starlette==1.3.1", "tomli==2.5.0", "tomli-w==1.2.0",
    "typing-inspection==0.4.2", "uvicorn==0.49.0", "watchfiles==1.3.0", "websockets==17.4",
    "wcwidth==0.7.0",
    # in the image, in versions unknown there (see above)
    "click==8.5.1", "typer==0.20.1", "rich==14.3.4", "packaging==25.0", "protobuf==6.33.6",
    "pathspec==1.1.1", "requests==2.34.2", "typing-extensions==4.16.0",
    # flwr[simulation]
    "ray==2.55.1",
    # fedlocal's own (pyproject.toml) and theirs: the partitioners need flwr-datasets and
    # Hugging Face datasets
    "flwr-datasets==0.6.1", "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19",
    "omegaconf==2.4.0",
]
EXTRAS = {"flwr": {"simulation"}, "sqlalchemy": {"asyncio"}, "uvicorn": {"standard"}}
# Ray's Java jars, its libraries that fedlocal never loads, and the dashboard's web pages
# (Flower starts Ray with include_dashboard=False)
RAY_DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/tune/", "ray/train/", "ray/llm/",
            "ray/data/", "ray/dashboard/client/")
NOT_CARRIED = {
    "uv": "flwr runs `python -m uv` only to install an app's dependencies at run time, "
          "which fedlocal's launcher turns off",
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
# KINDS.md, 'Python packages already there' (nvidia-h200, read 2026-11-17)
DEVICE_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc
anyio attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama
contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler
cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
FMNIST_SOURCES = (Path("/usr/share/datasets/fashion-mnist"),)
SHAKESPEARE_SOURCE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def say(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------- prepare (here)

def download(spec: str) -> Path:
    """The cp312 manylinux (or pure-Python) wheel of ``spec`` (``name==version``), from the
    download cache or PyPI through pip."""
    name, version = spec.split("==")
    stem = "[-_.]".join(re.escape(part) for part in norm(name).split("-"))
    pattern = re.compile(rf"^{stem}-{re.escape(version)}-", re.IGNORECASE)
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    found = [p for p in DOWNLOADS.glob("*.whl") if pattern.match(p.name)]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(DOWNLOADS), spec]
        for platform in PLATFORMS:
            cmd[-3:-3] = ["--platform", platform]
        subprocess.run(cmd, check=True)
        found = [p for p in DOWNLOADS.glob("*.whl") if pattern.match(p.name)]
    if len(found) != 1:
        raise SystemExit(f"expected one wheel for {spec} in {DOWNLOADS}, found {found}")
    return found[0]


def requirements(wheel: Path) -> list[tuple[str, str]]:
    """``(name, requirement)`` of a wheel's Requires-Dist that apply on the device
    (CPython 3.12, Linux x86-64), with the extras fedlocal uses (``EXTRAS``)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    own = norm(re.search(r"^Name: (.+)$", text, re.M).group(1))
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    out = []
    for line in re.findall(r"^Requires-Dist: (.+)$", text, re.M):
        req = Requirement(line)
        extras = {""} | EXTRAS.get(own, set())
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            out.append((norm(req.name), line))
    return out


def project_requirements() -> list[tuple[str, str]]:
    """fedlocal's own ``[project] dependencies`` (pyproject.toml)."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [(norm(Requirement(line).name), line) for line in deps]


def check_closure(wheels: dict[str, Path]) -> list[str]:
    """Requirements (of fedlocal and of every carried wheel) that are neither carried nor
    in the image (nor in NOT_CARRIED)."""
    carried = {norm(spec.split("==")[0]): spec.split("==")[1] for spec in WHEELS}
    image = {norm(n) for n in DEVICE_PACKAGES}
    missing = []
    roots = {"fedlocal": project_requirements(),
             **{spec: requirements(wheel) for spec, wheel in wheels.items()}}
    for spec, reqs in roots.items():
        for name, line in reqs:
            where = ("carried " + carried[name] if name in carried else
                     "in the image" if name in image else
                     "not carried: " + NOT_CARRIED[name] if name in NOT_CARRIED else None)
            if where is None:
                missing.append(f"{spec} needs {line}")
            print(f"    {spec:32} {line:60} {where or 'MISSING'}")
    return missing


def repack(wheel: Path, target: Path) -> None:
    """``wheel`` rewritten uncompressed (ZIP_STORED) into ``target``, Ray without
    ``RAY_DROP`` (and those files taken out of its RECORD)."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target / wheel.name, "w",
                                                         zipfile.ZIP_STORED) as dst:
        drop = RAY_DROP if wheel.name.startswith("ray-") else ()
        for info in src.infolist():
            if info.filename.startswith(drop):
                continue
            data = src.read(info)
            if drop and info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not line.startswith(drop)).encode()
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, data)


def xz_tar(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        tar = subprocess.Popen(["tar", "-C", str(source), "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-9e", "-T0"], stdin=tar.stdout, stdout=out, check=True)
        if tar.wait() != 0:
            raise SystemExit(f"tar of {source} failed")
    tmp.replace(target)


def travel_size() -> dict[str, int]:
    """Bytes of what the device tool copies: tracked files, untracked files that git does
    not ignore, and the carried folders."""
    def files(*args):
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
        return [REPO / f for f in out if f and (REPO / f).is_file()]

    sizes = {"tracked": sum(p.stat().st_size for p in files()),
             "untracked": sum(p.stat().st_size for p in files("--others", "--exclude-standard"))}
    for folder in (WHEEL_DIR, DATA_DIR):
        sizes[folder.name] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    sizes["total"] = sum(sizes.values())
    return sizes


def prepare(args) -> int:
    import tempfile

    for pattern in ("/.whl/", "/.gpudata/"):
        exclude = REPO / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        if pattern not in lines:
            exclude.write_text("\n".join([*lines, pattern]) + "\n")
    say(f"downloading {len(WHEELS)} wheels into {DOWNLOADS} (cached)")
    wheels = {spec: download(spec) for spec in WHEELS}
    say("Requires-Dist of every carried wheel (device: CPython 3.12, Linux x86-64):")
    missing = check_closure(wheels)
    if missing:
        say("MISSING requirements:\n  " + "\n  ".join(missing))
        return 1
    say("the set is closed: every requirement is carried or in the image")
    WHEEL_DIR.mkdir(exist_ok=True)
    for stale in WHEEL_DIR.glob("*.whl"):  # the bundle replaces loose wheels
        stale.unlink()
    manifest = "\n".join(sorted(p.name for p in wheels.values())) + "\n" + repr(RAY_DROP)
    stamp = WHEEL_DIR / "wheels-cp312.txt"
    if WHEELS_BUNDLE.exists() and stamp.exists() and stamp.read_text() == manifest:
        say(f"{WHEELS_BUNDLE.name} is current")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for wheel in wheels.values():
                repack(wheel, Path(tmp))
            say(f"packing {len(wheels)} wheels into {WHEELS_BUNDLE} (xz -9, a few minutes)")
            xz_tar(Path(tmp), WHEELS_BUNDLE)
        stamp.write_text(manifest)
    if not args.no_data:
        prepare_data(args.fmnist_train)
    sizes = travel_size()
    say("what travels: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
        + f" (limit {TRAVEL_LIMIT / 2**20:.0f} MiB)")
    if sizes["total"] > TRAVEL_LIMIT - 2**20:
        say("TOO BIG for the device tool: drop data (--fmnist-train N, --no-data)")
        return 1
    return 0


def prepare_data(fmnist_train: int) -> None:
    """``.gpudata/data.tar.xz``: ``fashion-mnist/`` (the four raw IDX files; the first
    ``fmnist_train`` training images only, if > 0) and ``tinyshakespeare/input.txt``."""
    import gzip
    import tempfile

    manifest = f"fmnist_train={fmnist_train}"
    stamp = DATA_DIR / "data.txt"
    if DATA_BUNDLE.exists() and stamp.exists() and stamp.read_text() == manifest:
        say(f"{DATA_BUNDLE.name} is current")
        return
    source = next((d for d in FMNIST_SOURCES if (d / (FMNIST_FILES[0] + ".gz")).exists()), None)
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            say("no Fashion-MNIST here (apt-get install dataset-fashion-mnist); not carried")
        else:
            (Path(tmp) / "fashion-mnist").mkdir()
            for name in FMNIST_FILES:
                raw = gzip.decompress((source / f"{name}.gz").read_bytes())
                if fmnist_train > 0 and name.startswith("train-"):
                    dims = raw[3]
                    count = int.from_bytes(raw[4:8], "big")
                    item = 1
                    for i in range(1, dims):
                        item *= int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
                    keep = min(count, fmnist_train)
                    header = raw[:4] + keep.to_bytes(4, "big") + raw[8:4 + 4 * dims]
                    raw = header + raw[4 + 4 * dims:4 + 4 * dims + keep * item]
                (Path(tmp) / "fashion-mnist" / name).write_bytes(raw)
        if SHAKESPEARE_SOURCE.is_file():
            (Path(tmp) / "tinyshakespeare").mkdir()
            shutil.copy(SHAKESPEARE_SOURCE, Path(tmp) / "tinyshakespeare" / "input.txt")
        else:
            say(f"no tiny Shakespeare at {SHAKESPEARE_SOURCE}; not carried")
        say(f"packing the data into {DATA_BUNDLE} (xz -9, about a minute)")
        xz_tar(Path(tmp), DATA_BUNDLE)
    stamp.write_text(manifest)



# ----------------------------------------------------------------------------- steps (there)

class Step:
    """One step's checks and numbers, written to ``<work>/<name>.json``."""

    def __init__(self, name: str, args):
        self.name, self.args = name, args
        self.checks: list[dict] = []
        self.numbers: dict = {}

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        say(f"{'PASS' if ok else 'FAIL'}: {what}" + (f" ({detail})" if detail else ""))
        return bool(ok)

    def write(self) -> int:
        ok = all(c["ok"] for c in self.checks)
        Path(self.args.work, f"{self.name}.json").write_text(json.dumps(
            {"step": self.name, "ok": ok, "checks": self.checks, "numbers": self.numbers},
            indent=2, default=str) + "\n")
        return 0 if ok else 1


def out_file(args, name: str) -> Path | None:
    """``$OUT/name`` (None without ``--out``): one of the at most 8 files that come back."""
    if not args.out:
        return None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return Path(args.out) / name


def nvidia_smi() -> str:
    queries = (["--query-gpu=name,memory.used,memory.total,utilization.gpu", "--format=csv"],
               ["--query-compute-apps=pid,process_name,used_memory", "--format=csv"])
    parts = []
    for query in queries:
        try:
            result = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True,
                                    timeout=20)
            parts.append(result.stdout.strip() or result.stderr.strip())
        except (OSError, subprocess.TimeoutExpired) as err:
            parts.append(f"nvidia-smi {query[0]}: {err}")
    return "\n".join(parts)


def env(args) -> int:
    step = Step("env", args)
    import platform

    import torch

    n = step.numbers
    n["python"] = f"{platform.python_version()} ({sys.executable})"
    n["torch"] = torch.__version__
    n["torch_cuda"] = torch.version.cuda
    n["cuda_available"] = torch.cuda.is_available()
    say(f"torch.cuda.is_available() = {n['cuda_available']}")
    if n["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        n["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, " \
                   f"{props.multi_processor_count} SMs"
        n["cudnn"] = torch.backends.cudnn.version()
        x = torch.randn(1024, 1024, device="cuda")
        n["matmul_check"] = float((x @ x).sum().item())  # a kernel runs
    for module in ("flwr", "ray", "grpc", "google.protobuf", "pydantic", "sqlalchemy", "typer",
                   "flwr_datasets", "datasets", "pyarrow", "fsspec", "omegaconf", "sklearn"):
        try:
            mod = __import__(module, fromlist=["__version__"])
            n[module] = f"{getattr(mod, '__version__', '?')} ({Path(mod.__file__).parent})"
        except Exception as err:  # noqa: BLE001 - reported, not raised
            n[module] = f"not importable: {type(err).__name__}: {err}"
    for key in ("torch", "torch_cuda", "cuda_available", "gpu", "cudnn", "flwr", "ray", "grpc",
                "google.protobuf", "flwr_datasets", "datasets", "pyarrow", "fsspec"):
        say(f"{key}: {n.get(key)}")
    n["nvidia_smi"] = nvidia_smi()
    say("nvidia-smi:\n" + n["nvidia_smi"])
    n["requirement_conflicts"] = conflicts()
    if n["requirement_conflicts"]:
        say("carried packages whose requirements the installed versions miss (pip would "
            "complain; at run time it may not matter):\n  " + "\n  ".join(n["requirement_conflicts"]))
    if args.device == "cuda":
        step.check("torch sees a CUDA device", n["cuda_available"], n.get("gpu", ""))
    step.check("flwr 1.39.0 is importable", n["flwr"].startswith("1.39.0"), n["flwr"])
    try:  # fedlocal's client splits: flwr-datasets' partitioners on a Hugging Face Dataset
        import numpy as np

        from tasks.partition import partition_all

        parts = partition_all("dirichlet", 4, np.arange(400) % 10, seed=0)
        step.check("fedlocal's partitioner runs (flwr-datasets, datasets)",
                   sum(map(len, parts)) == 400, f"sizes {[len(x) for x in parts]}")
    except Exception as err:  # noqa: BLE001
        step.check("fedlocal's partitioner runs (flwr-datasets, datasets)", False,
                   f"{type(err).__name__}: {err}")
    if "not importable" not in n["ray"]:
        n["ray_gpus"] = ray_gpus()
        say(f"GPUs Ray detects: {n['ray_gpus']}")
        if args.device == "cuda":
            step.check("Ray detects the GPU (or simulated clients cannot get a GPU share)",
                       isinstance(n["ray_gpus"], int) and n["ray_gpus"] >= 1, str(n["ray_gpus"]))
    return step.write()


def ray_gpus() -> int | str:
    """The GPUs Ray finds on this machine (what it offers simulated clients)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        return get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return f"{type(err).__name__}: {err}"


def conflicts() -> list[str]:
    """Requirements of the packages installed from the carried wheels (``/tmp/site``)
    that the importable versions do not satisfy."""
    from importlib.metadata import PackageNotFoundError, distributions, version

    from packaging.requirements import Requirement

    site = os.environ.get("GPU_CHECK_SITE", "/tmp/site")
    out = []
    for dist in distributions(path=[site]) if Path(site).is_dir() else []:
        own = norm(dist.metadata["Name"])
        env = {"python_version": "3.12", "python_full_version": "3.12.3", "extra": ""}
        for line in dist.requires or []:
            req = Requirement(line)
            extras = {""} | EXTRAS.get(own, set())
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e})
                                                  for e in extras):
                continue
            try:
                have = version(req.name)
            except PackageNotFoundError:
                if norm(req.name) not in NOT_CARRIED:
                    out.append(f"{own} needs {line}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                out.append(f"{own} needs {line}: have {have}")
    return out


def run_records(folder: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
               if line.strip()] if (folder / "metrics.jsonl").is_file() else []
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    return records, summary


CUDA_KEY = "cuda"  # client.protocol.CUDA in metrics.jsonl ('cuda', or e.g. 'train_cuda')


def check_run(step: Step, status: str, folder: Path, rounds: int, out_name: str) -> list[dict]:
    """The run completed, wrote ``rounds`` records, and its clients trained where asked:
    the reply metric ``cuda`` (client.protocol.CUDA, averaged over a round's replies) is 1
    on a GPU run, 0 on a CPU run."""
    records, summary = run_records(folder)
    step.check("the run completed", status == "finished:completed", status)
    step.check(f"metrics.jsonl has {rounds} round records", len(records) == rounds,
               f"{len(records)} records in {folder}")
    if records:
        expected = 1.0 if step.args.device == "cuda" else 0.0
        key = next((k for k in records[0] if k == CUDA_KEY or k.endswith("_" + CUDA_KEY)), CUDA_KEY)
        values = [r.get(key) for r in records]
        if all(v is None for v in values):
            step.check(f"reply metric '{CUDA_KEY}' = {expected:g} in every round record", False,
                       f"no '{CUDA_KEY}' key in metrics.jsonl: the server drops reply metrics that "
                       "client.protocol.TRAIN_METRICS does not list (strategies/replies.py); keys: "
                       + ", ".join(records[0]))
        else:
            step.check(f"reply metric '{key}' = {expected:g} in every round record",
                       all(v == expected for v in values), f"{values}")
        last = records[-1]
        step.numbers.update({
            "final_test_accuracy": last.get("test_accuracy"), "final_test_loss": last.get("test_loss"),
            "round_seconds": [round(r["seconds"], 3) for r in records],
            "client_train_seconds": [r.get("train_seconds") for r in records],
            CUDA_KEY: values, "run_seconds": summary.get("seconds"),
            "versions": summary.get("versions"),
        })
        target = out_file(step.args, out_name)
        if target is not None:
            shutil.copy(folder / "metrics.jsonl", target)
    return records


def run_config(args, name: str, rounds: int) -> dict:
    return {"train.device": args.device, "run.rounds": rounds, "run.name": name,
            "run.output_dir": str(Path(args.work) / "runs"), "run.save_model": False}


def sim(args) -> int:
    """Flower's simulation engine (Ray) with every client on a share of the GPU."""
    from deploy.launch import LocalSimulation

    step = Step("sim", args)
    nodes, rounds = (2, 2) if args.quick else (4, 3)
    gpus = 1 / nodes if args.device == "cuda" else 0.0
    federation = f"num-supernodes={nodes} client-resources-num-cpus=1"
    if gpus:
        federation += f" client-resources-num-gpus={gpus:g}"
        if ray_gpus() == 0:  # Ray's own detection (NVML) failed: tell it there is one
            federation += " init-args-num-gpus=1"
    config = run_config(args, "sim", rounds)
    step.numbers.update({"federation_config": federation, "run_config": config})
    say(f"simulation: --federation-config \"{federation}\", {rounds} rounds, train.device={args.device}")
    start = time.perf_counter()
    with LocalSimulation() as flower:
        status, _ = flower.run_flwr(["--federation-config", federation], config, timeout=600,
                                    echo=True)
    step.numbers["wall_seconds"] = time.perf_counter() - start
    if args.device == "cuda":
        step.check("a run with train.device='cuda' completed in Ray's clients (they raise "
                   "where they see no CUDA device)", status == "finished:completed", status)
    check_run(step, status, Path(config["run.output_dir"]) / "sim", rounds, "sim_metrics.jsonl")
    return step.write()


WORKER_INIT = re.compile(r"warm worker (\d+): CUDA initialised in pid (\d+)")
WORKER_MESSAGE = re.compile(r"warm worker (\d+): message (\d+) served; (.*)")
WORKER_LISTEN = re.compile(r"warm worker (\d+): listening")


def parse_worker_log(text: str) -> dict:
    messages = WORKER_MESSAGE.findall(text)
    return {
        "pids": sorted({int(p) for p in WORKER_LISTEN.findall(text)}),
        "cuda_initialised": len(WORKER_INIT.findall(text)),
        "messages": len(messages),
        "message_pids": sorted({int(p) for p, _, _ in messages}),
        "last": messages[-1][2] if messages else None,
    }


def deploy(args) -> int:
    """A SuperLink and 2 SuperNodes (gRPC on loopback), each with a warm worker on the GPU;
    the workers' logs are read before the SuperNodes stop (a worker that exits normally
    removes its log)."""
    from client import worker
    from deploy.launch import LocalDeployment

    step = Step("deploy", args)
    nodes, rounds = 2, (2 if args.quick else 3)
    config = run_config(args, "deploy", rounds)
    folder = worker.worker_dir()
    before = set(folder.glob("*.log"))
    say(f"deployment: {nodes} SuperNodes with warm workers ({folder}), {rounds} rounds, "
        f"train.device={args.device}")
    start = time.perf_counter()
    with LocalDeployment(nodes, warm_worker=120) as flower:
        status, _ = flower.run(config, timeout=600, echo=True)
        time.sleep(0.5)  # the workers log right after their last reply
        logs = {p.name: p.read_text(errors="replace") for p in sorted(folder.glob("*.log"))
                if p not in before}
        smi = nvidia_smi() if shutil.which("nvidia-smi") else "(no nvidia-smi)"
    step.numbers["wall_seconds"] = time.perf_counter() - start
    check_run(step, status, Path(config["run.output_dir"]) / "deploy", rounds, "deploy_metrics.jsonl")
    workers = {name: parse_worker_log(text) for name, text in logs.items()}
    step.numbers["workers"] = workers
    step.numbers["nvidia_smi_during_run"] = smi
    say("nvidia-smi with the workers alive:\n" + smi)
    step.check(f"{nodes} warm workers logged", len(workers) == nodes, f"{len(workers)} logs in {folder}")
    for name, w in workers.items():
        pid = w["pids"][0] if w["pids"] else None
        step.check(f"worker {pid}: one process served all {w['messages']} messages",
                   len(w["pids"]) == 1 and w["message_pids"] == w["pids"] and w["messages"] >= rounds,
                   f"{name}: listening pids {w['pids']}, message pids {w['message_pids']}")
        if args.device == "cuda":
            step.check(f"worker {pid}: CUDA initialised once for {w['messages']} messages",
                       w["cuda_initialised"] == 1, f"{w['cuda_initialised']} times; last: {w['last']}")
        else:
            step.check(f"worker {pid}: cuda not used", w["last"] == "cuda not used", str(w["last"]))
    target = out_file(args, "deploy_workers.log")
    if target is not None:
        target.write_text("".join(f"==> {name} <==\n{text}\n" for name, text in logs.items())
                          + f"==> nvidia-smi, workers alive <==\n{smi}\n")
    return step.write()


def compare(args) -> int:
    """FedAvg on digits, 4 clients, 3 rounds, in one process (the engine, ``bench.engine_timing``:
    the same client half and seeds as the ClientApp) on ``--device`` and on the CPU."""
    import torch

    import tasks
    from bench.engine_timing import timed_run

    step = Step("compare", args)
    overrides = {"task.name": "digits", "strategy.name": "fedavg", "run.seed": 0}
    clients, rounds = 4, 3
    results = {}
    for device in (args.device, "cpu"):
        models = []
        make_model = tasks.make_model
        tasks.make_model = lambda *a, **k: models.append(make_model(*a, **k)) or models[-1]
        try:
            run = timed_run({**overrides, "train.device": device}, clients, rounds, threads=1)
        finally:
            tasks.make_model = make_model
        state = {k: v.detach().to("cpu", torch.float64) for k, v in models[-1].state_dict().items()}
        results[device] = (run, state)
        last = run["rounds"][-1]
        say(f"{device}: test_accuracy {last['test_accuracy']:.6f}, test_loss {last['test_loss']:.8f}, "
            f"model on {run['device']}, {sum(r['seconds'] for r in run['rounds']):.3f} s for {rounds} rounds")
        step.numbers[device] = {"device": run["device"], "test_accuracy": last["test_accuracy"],
                                "test_loss": last["test_loss"],
                                "round_seconds": [r["seconds"] for r in run["rounds"]]}
    (a, sa), (b, sb) = results[args.device], results["cpu"]
    dparam = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    dloss = max(abs(x["test_loss"] - y["test_loss"]) for x, y in zip(a["rounds"], b["rounds"]))
    dacc = max(abs(x["test_accuracy"] - y["test_accuracy"]) for x, y in zip(a["rounds"], b["rounds"]))
    step.numbers.update({"max_abs_param_diff": dparam, "max_abs_test_loss_diff": dloss,
                         "max_abs_test_accuracy_diff": dacc})
    say(f"{args.device} vs cpu: max |dparam| {dparam:.3e}, max |dtest_loss| {dloss:.3e}, "
        f"max |dtest_accuracy| {dacc:.4f}")
    step.check(f"the {args.device} run trained on {args.device}", a["device"].startswith(args.device),
               a["device"])
    step.check(f"max |param({args.device}) - param(cpu)| < 1e-3 after 3 rounds", dparam < 1e-3,
               f"{dparam:.3e}")
    step.check("test loss within 1e-3 every round", dloss < 1e-3, f"{dloss:.3e}")
    step.check("test accuracy within 2 of 360 test images every round", dacc <= 2 / 360 + 1e-9,
               f"{dacc:.4f}")
    return step.write()


def bench(args) -> int:
    """``python -m bench.run`` (``args.bench_args``) in this process, so that a timeout's
    SIGTERM stops its Flower runtimes (KeyboardInterrupt, their ``with`` blocks); its JSON
    report goes to ``<work>/bench-<n>.json`` for the report."""
    from bench import run as bench_run

    if args.bench_args[:1] == ["--"]:
        args.bench_args = args.bench_args[1:]
    if shutil.which("git") is None:  # bench.run records the commit with git
        bench_run.git_commit = lambda: "unknown (no git)"
    before = set(bench_run.RESULTS.glob("*.json")) if bench_run.RESULTS.is_dir() else set()
    try:
        code = bench_run.main(args.bench_args)
    finally:
        os.chdir(REPO)
    for path in sorted(set(bench_run.RESULTS.glob("*.json")) - before):
        index = len(list(Path(args.work).glob("bench-*.json")))
        shutil.copy(path, Path(args.work) / f"bench-{index}.json")
        shutil.copy(path.with_suffix(".md"), Path(args.work) / f"bench-{index}.md")
    return code



def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report(args) -> int:
    """``$OUT/gpu_results.md`` and ``.json`` from the steps' results, ``$OUT/bench.md`` and
    ``bench.json`` from the benchmark's."""
    work = Path(args.work)
    steps = {}
    for path in sorted(work.glob("*.json")):
        if not path.name.startswith("bench-"):
            steps[path.stem] = json.loads(path.read_text())
    timings = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines()
               if line.strip()] if (work / "steps.tsv").is_file() else []
    benches = [json.loads(p.read_text()) for p in sorted(work.glob("bench-*.json"))]
    env_n = steps.get("env", {}).get("numbers", {})
    lines = [f"# fedlocal GPU check ({args.device}{', quick' if args.quick else ''})", "",
             f"GPU: {env_n.get('gpu', 'none')}; torch {env_n.get('torch')} (CUDA {env_n.get('torch_cuda')}); "
             f"flwr {env_n.get('flwr', '?').split(' ')[0]}; ray {env_n.get('ray', '?').split(' (')[0]}; "
             f"Python {env_n.get('python', '?').split(' ')[0]}.", "",
             "| step | exit | seconds |", "| --- | --- | --- |",
             *[f"| {t[0]} | {t[1]} | {t[2] if len(t) > 2 else ''} |" for t in timings], "",
             "| step | check | result | detail |", "| --- | --- | --- | --- |"]
    for name, step in steps.items():
        for c in step["checks"]:
            detail = c["detail"].replace("|", "/").replace("\n", " ")[:300]
            lines.append(f"| {name} | {c['check']} | {'PASS' if c['ok'] else '**FAIL**'} | {detail} |")
    lines.append("")
    rows = []
    for name in ("sim", "deploy"):
        n = steps.get(name, {}).get("numbers", {})
        if n.get("round_seconds"):
            rows.append(f"| {name} | {fmt(n.get('final_test_accuracy'), 4)} "
                        f"| {fmt(n.get('final_test_loss'), 4)} "
                        f"| {', '.join(f'{x:.2f}' for x in n['round_seconds'])} | {n.get(CUDA_KEY)} "
                        f"| {fmt(n.get('wall_seconds'), 1)} |")
    if rows:
        lines += ["| run | final test acc | final test loss | round seconds | cuda metric | wall s |",
                  "| --- | --- | --- | --- | --- | --- |", *rows, ""]
    workers = steps.get("deploy", {}).get("numbers", {}).get("workers", {})
    if workers:
        lines += ["| warm worker | pid | CUDA initialised | messages | after the last message |",
                  "| --- | --- | --- | --- | --- |",
                  *[f"| {name[:12]} | {w['pids']} | {w['cuda_initialised']}x | {w['messages']} "
                    f"| {w['last']} |" for name, w in workers.items()], ""]
    comp = steps.get("compare", {}).get("numbers", {})
    if comp.get("cpu"):
        lines += ["FedAvg on digits, 4 clients, 3 rounds, one process (`bench.engine_timing`):", "",
                  "| device | final test acc | final test loss | seconds (3 rounds) |",
                  "| --- | --- | --- | --- |"]
        for device in dict.fromkeys((args.device, "cpu")):
            d = comp.get(device, {})
            lines.append(f"| {d.get('device')} | {fmt(d.get('test_accuracy'), 6)} "
                         f"| {fmt(d.get('test_loss'), 8)} "
                         f"| {fmt(sum(d.get('round_seconds', [])), 3)} |")
        lines += ["", f"max |Δparam| {comp.get('max_abs_param_diff', 0):.3e} (tolerance 1e-3), "
                  f"max |Δtest loss| {comp.get('max_abs_test_loss_diff', 0):.3e} (1e-3), "
                  f"max |Δtest accuracy| {comp.get('max_abs_test_accuracy_diff', 0):.4f} (2/360).", ""]
    bench_rows = []
    for b in benches:
        for workload, w in b.get("workloads", {}).items():
            if "skipped" in w:
                bench_rows.append(f"| {workload} | – | skipped: {w['skipped']} | | | |")
                continue
            device = w.get("config", {}).get("train.device", "auto")
            for system, r in w.get("systems", {}).items():
                if r.get("available") is False:
                    continue
                bench_rows.append(f"| {workload} ({device}) | {system} | {fmt(r.get('median'), 4)} "
                                  f"| {fmt(r.get('first_round'), 3)} | {fmt(r.get('samples_per_second'), 0)} "
                                  f"| {fmt(r.get('final_test_accuracy'), 4)} |")
    if bench_rows:
        lines += ["Benchmark (`bench.run`; engine = pure compute, simulation = fedlocal in simulation):", "",
                  "| workload | system | median s/round | first round s | samples/s | final test acc |",
                  "| --- | --- | --- | --- | --- | --- |", *bench_rows, ""]
    text = "\n".join(lines) + "\n"
    print(text)
    ok = all(step.get("ok") for step in steps.values()) and all(
        len(t) > 1 and t[1] == "0" for t in timings)
    result = {"ok": ok, "device": args.device, "quick": args.quick, "steps": steps,
              "timings": timings}
    for name, content in (("gpu_results.md", text),
                          ("gpu_results.json", json.dumps(result, indent=2, default=str) + "\n")):
        target = out_file(args, name) or work / name
        target.write_text(content)
    if benches:
        (out_file(args, "bench.md") or work / "bench.md").write_text(
            "\n\n".join(p.read_text() for p in sorted(work.glob("bench-*.md"))))
        (out_file(args, "bench.json") or work / "bench.json").write_text(
            json.dumps(benches, indent=1, default=str) + "\n")
    say(f"overall: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- main

def _interrupt(signum, frame):
    """A timeout's SIGTERM ends a step like Ctrl-C, so that ``with`` blocks stop the Flower
    processes the step started (they run in sessions of their own)."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="here: wheels and data for the GPU machine")
    p.add_argument("--fmnist-train", type=int, default=0,
                   help="carry only the first N Fashion-MNIST training images (0: all 60,000)")
    p.add_argument("--no-data", action="store_true", help="wheels only")
    for name in ("env", "sim", "deploy", "compare", "report", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK", "/tmp/gpu-check"))
        p.add_argument("--out", default=os.environ.get("OUT") or None,
                       help="where files that come back go (default $OUT)")
        p.add_argument("--device", choices=("cuda", "cpu"),
                       default=os.environ.get("GPU_CHECK_DEVICE", "cuda"))
        p.add_argument("--quick", action="store_true",
                       default=os.environ.get("GPU_CHECK_QUICK", "0") not in ("", "0"))
        if name == "bench":
            p.add_argument("bench_args", nargs=argparse.REMAINDER,
                           help="arguments of python -m bench.run")
    args = parser.parse_args(argv)
    if args.step != "prepare":
        Path(args.work).mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)  # also where the shell started us ignoring it
    steps = {"prepare": prepare, "env": env, "sim": sim, "deploy": deploy, "compare": compare,
             "report": report, "bench": bench}
    return steps[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
