# grid-payload: one image, one command (`payload`), for PanDA prun --containerImage, HTCondor's
# container universe and docker run.  Sites run it read-only, as an arbitrary user, with the
# ENTRYPOINT bypassed: everything lives in /opt/payload and `payload` is on PATH.
#
#   docker build -t grid-payload:0.1.0 .                      # GPU TensorFlow (CUDA from pip wheels)
#   docker build --build-arg BASE_IMAGE=my/python:3.11 .      # where the public base cannot be pulled
#   docker build --build-arg TF_EXTRA=cpu .                   # CPU-only TensorFlow, a smaller image
#   docker build --build-arg PIP_CERT=/path/in/base/ca.crt .  # pip behind a TLS-intercepting proxy

ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TF_EXTRA=gpu
# A CA bundle for pip behind a TLS-intercepting proxy: a build argument of this stage only, so it
# never reaches the final image's environment.
ARG PIP_CERT
# The venv is built in place (/opt/payload) so its paths are valid when copied to the final stage.
RUN python3 -m venv /opt/payload
COPY docker/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md /src/
COPY payload /src/payload
COPY submit /src/submit
RUN /opt/payload/bin/pip install --no-cache-dir --constraint /tmp/constraints.txt "/src[${TF_EXTRA},grid,onnx]" \
    && /opt/payload/bin/payload --version

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/grid-payload/grid-payload
LABEL org.opencontainers.image.title="grid-payload" \
      org.opencontainers.image.description="Train and apply neural networks on ROOT ntuples on the grid, HTCondor or a laptop" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/payload /opt/payload
COPY docker/entrypoint.sh /opt/payload/bin/payload-entrypoint
# tcmalloc keeps freed memory for reuse where glibc's malloc hands TensorFlow's large per-step
# buffers back to the kernel and faults them in again every step: streaming training ran at half
# speed on a 2-core VM without it (benchmarks/train.py --allocator).  Debian-based bases only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/lib/*/libtcmalloc_minimal.so.4 /usr/local/lib/libtcmalloc_minimal.so.4
# Nothing is written into the image at run time: no bytecode caches.
ENV PATH=/opt/payload/bin:$PATH \
    LD_PRELOAD=/usr/local/lib/libtcmalloc_minimal.so.4 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KERAS_BACKEND=tensorflow
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin payload
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["/opt/payload/bin/payload-entrypoint"]
CMD ["--help"]
