# syntax=docker/dockerfile:1
# GPU worker: this project installed on vLLM's CUDA image (vLLM, torch and CUDA come from
# the base; we add the router on top). Build from the repository root:
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t ticket-router:gpu .
# The model (e.g. Mistral-7B) and its LoRA adapter are mounted at run time, never baked in.
# vLLM's images ship Python 3.12: pyproject's requires-python must admit it.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    ROUTER_METRICS__HOST=0.0.0.0 \
    ROUTER_METRICS__PORT=9464 \
    ROUTER_ENGINE__CACHE_DIR=/var/cache/ticket-router \
    ROUTER_LOG_FORMAT=json \
    HOME=/var/cache/ticket-router

WORKDIR /opt/ticket-router
COPY pyproject.toml README.md ticket_router.py ./
COPY schemas ./schemas
COPY expert ./expert
COPY worker ./worker
COPY feedback ./feedback
COPY loadgen ./loadgen
COPY bench ./bench
COPY scenarios ./scenarios

# Keep the base image's vLLM (built against its CUDA and torch): the constraint stops the
# resolver from replacing it with whatever `vllm` is newest on the index.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -c 'import vllm; print(f"vllm=={vllm.__version__}")' > /tmp/keep-vllm.txt \
    && python3 -m pip install --constraint /tmp/keep-vllm.txt ".[gpu]" \
    && rm /tmp/keep-vllm.txt \
    && python3 -c 'import worker.metrics, expert.engine, confluent_kafka'

RUN groupadd --system --gid 10001 router \
    && useradd --system --uid 10001 --gid router --home-dir /var/cache/ticket-router \
        --no-create-home --shell /usr/sbin/nologin router \
    && install -d -o router -g router -m 0750 /var/cache/ticket-router
USER 10001:10001

EXPOSE 9464
# /healthz answers once the engine is loaded and the consume loop runs; loading a 7B model
# takes minutes, hence the long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ROUTER_METRICS__PORT', '9464') + '/healthz', timeout=4)"]

# The base image's entrypoint starts vLLM's OpenAI server; this image runs the worker.
ENTRYPOINT ["ticket-router"]
CMD ["worker"]
