# fedlocal app image: Flower 1.39 (flower-superlink, flower-supernode, flower-superexec, flwr),
# PyTorch and the fedlocal app, every dependency installed at build time (the deployment runs
# with runtime dependency installation off). docker-compose.yml runs every Flower process of
# the deployment from this one image; docs/compose.md says how.
#
#   docker build -t fedlocal:latest .                    # python:3.11-slim, deps from PyPI
#   podman build --runtime runc -t fedlocal:latest \
#     --build-arg BASE_IMAGE=localhost/fedlocal-base:bookworm \
#     --build-arg PIP_OPTIONS="--no-index --no-build-isolation" .   # no network at all
#
# BASE_IMAGE: any image whose `python` is a Python 3.11 with pip (deploy/base-image.sh makes
#   one without a registry, with the dependencies already installed).
# PIP_OPTIONS: extra options for both pip installs, e.g. "--index-url http://mirror/simple"
#   or "--no-index --find-links http://HOST:8080/" for a wheel folder served over HTTP
#   (docs/compose.md, "Offline builds").
ARG BASE_IMAGE=python:3.11-slim

# The dependency list alone, so that the (large) dependency layer below is rebuilt only
# when the dependencies change, not when pyproject.toml's other tables do.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml deploy/requirements.py /tmp/
RUN python /tmp/requirements.py /tmp/pyproject.toml > /tmp/requirements.txt

FROM ${BASE_IMAGE}
ARG PIP_OPTIONS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN python -m pip install ${PIP_OPTIONS} -r /tmp/requirements.txt \
    && rm -rf /tmp/requirements.txt

WORKDIR /opt/fedlocal
COPY . /tmp/src
RUN python -m pip install ${PIP_OPTIONS} --no-deps /tmp/src \
    && cp /tmp/src/deploy/register_supernodes.py /opt/fedlocal/register_supernodes.py \
    && rm -rf /tmp/src \
    && python -c "import flwr, torch, torchvision, server.app, client.app; print('flwr', flwr.__version__, 'torch', torch.__version__)" \
    && mkdir -p /outputs && ln -s /outputs /root/fedlocal-runs

# The ServerApp writes its run folders under run.output_dir: docker-compose.yml mounts a
# host folder at /outputs, and the default ~/fedlocal-runs (as root) is a link to it.
CMD ["flower-superlink", "--help"]
