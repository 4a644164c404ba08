# One image for every kgslb service: `kgslb watcher|reconciler|health|dns`.
# Builds from PyPI packages only, at the versions of requirements.lock:
#   docker build -t kgslb:0.1.0 .   (or podman build)
# The base is pinned by digest, so a rebuild starts from the same bytes. To move to a newer
# base: docker buildx imagetools inspect python:3.11-slim-bookworm, and replace the digest.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/kgslb
COPY pyproject.toml README.md requirements.lock ./
COPY shared ./shared
COPY services ./services
COPY kgslb ./kgslb
# No extras: the embedded stack's nats-server and the dev tools stay out of the image.
# Then out of the final stage: the kubernetes client's asyncio copy (kubernetes/aio, 68 MB;
# the watcher uses the synchronous client) and pip/setuptools (build tools). What is left,
# /opt/kgslb, measured 168 MB with its bytecode (260 MB before): see docs/operations.md.
RUN /opt/kgslb/bin/pip install --no-compile -c requirements.lock . \
    && rm -rf /opt/kgslb/lib/python3.11/site-packages/kubernetes/aio \
    && /opt/kgslb/bin/python -m pip uninstall --yes pip setuptools \
    && /opt/kgslb/bin/python -m compileall -q /opt/kgslb/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kgslb" \
      org.opencontainers.image.description="Multi-cluster GSLB for Kubernetes on NATS" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 kgslb \
    && useradd --system --uid 10001 --gid kgslb --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kgslb
COPY --from=build /opt/kgslb /opt/kgslb
# Bytecode is compiled at build time: the root filesystem can be read-only.
ENV PATH=/opt/kgslb/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KGSLB_OPS_HOST=0.0.0.0 \
    KGSLB_OPS_PORT=8080
USER 10001:10001
# /healthz /readyz /metrics; DNS listens on 1053 (unprivileged) behind Service port 53.
EXPOSE 8080 1053/udp 1053/tcp
ENTRYPOINT ["kgslb"]
CMD ["--help"]
