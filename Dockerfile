# syntax=docker/dockerfile:1
# LDCP Serve: ldcp-server (gRPC :50051, Prometheus /metrics :9464), ldcp-client and ldcp.
#
#   docker build -t ldcp-serve:cuda .                                  # GPU image (default)
#   docker build -t ldcp-serve:cpu --build-arg VARIANT=cpu .           # CPU-only image
#   docker build -t ldcp-serve:cuda \
#     --build-arg LIBTORCH_URL=https://download.pytorch.org/libtorch/cu130/libtorch-...zip .
#
#   docker run --gpus all --restart on-failure -p 50051:50051 -p 9464:9464 \
#     -v ~/models/stable-diffusion-v1-5:/models/model:ro ldcp-serve:cuda
#
# --restart on-failure: the server exits 75 when gRPC stops accepting connections (README,
# Security: gRPC's listener watchdog) and expects to be started again, as Kubernetes does.
#
# The build stage runs the README's commands: scripts/setup.sh (Debian packages and .venv with
# the torch wheel, which is where libtorch comes from) and scripts/build.sh (CMake + Ninja), or,
# with LIBTORCH_URL, `Torch_DIR=/opt/libtorch/share/cmake/Torch scripts/build.sh` against the
# official libtorch. The runtime stage holds the three binaries, libtorch's shared libraries
# and the Debian libraries they load; no compiler, no Python, no model: the model folder (and
# a gates file, if any) are mounted at run time.

# cuda or cpu.
ARG VARIANT=cuda
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE} AS toolchain-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl unzip \
 && rm -rf /var/lib/apt/lists/*

# The CUDA toolkit from NVIDIA's Debian 12 repository: torch's CMake config (a CUDA libtorch)
# needs nvcc and the CUDA libraries' headers. CUDA_VERSION must be the CUDA of the torch wheel or
# libtorch used (PyPI's torch 2.15 wheel: CUDA 13.0).
FROM toolchain-cpu AS toolchain-cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG CUDA_VERSION=13.0
ARG CUDA_REPO=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64
RUN curl -fsSL -o /tmp/cuda-keyring.deb "${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && apt-get update \
 && apt-get install -y --no-install-recommends "cuda-toolkit-$(echo "${CUDA_VERSION}" | tr . -)" \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH} \
    CUDA_HOME=/usr/local/cuda

# ---------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM toolchain-${VARIANT} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG VARIANT
# Official libtorch (a zip from pytorch.org) instead of the torch wheel; empty: the wheel.
ARG LIBTORCH_URL=""
# The CPU image takes the CPU-only torch wheel (no CUDA libraries) from this index.
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Compile jobs: each libtorch translation unit takes over 1 GiB.
ARG JOBS=2
WORKDIR /src

# Set-up first, so that source edits do not reinstall the toolchain.
COPY scripts/setup.sh scripts/build.sh scripts/requirements.txt scripts/
RUN if [ "${VARIANT}" = cpu ] && [ -z "${LIBTORCH_URL}" ]; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && python3 -m venv .venv \
      && .venv/bin/python -m pip install --no-cache-dir --index-url "${TORCH_CPU_INDEX_URL}" \
           "$(grep -E '^torch==' scripts/requirements.txt)"; \
    fi \
 && scripts/setup.sh \
 && rm -rf /var/lib/apt/lists/* /root/.cache/pip
RUN if [ -n "${LIBTORCH_URL}" ]; then \
      curl -fsSL -o /tmp/libtorch.zip "${LIBTORCH_URL}" \
      && unzip -q /tmp/libtorch.zip -d /opt && rm /tmp/libtorch.zip; \
    fi

COPY CMakeLists.txt ./
COPY model model
COPY tools tools
COPY proto proto
COPY server server
COPY client client
COPY cli cli
COPY tests tests
COPY data data
RUN if [ -n "${LIBTORCH_URL}" ]; then export Torch_DIR=/opt/libtorch/share/cmake/Torch; fi \
 && LDCP_JOBS="${JOBS}" scripts/build.sh --target ldcp-server ldcp-client ldcp

# Stage what the runtime image needs under /opt/ldcp: the binaries, libtorch's libraries (and,
# for the wheel, the CUDA libraries its nvidia-* dependencies ship, kept at the same relative
# place so that libtorch's $ORIGIN run paths still resolve) and an ld.so.conf naming them all.
RUN mkdir -p /opt/ldcp/bin /opt/ldcp/lib /opt/ldcp/share \
 && cp build/server/ldcp-server build/client/ldcp-client build/tools/ldcp /opt/ldcp/bin/ \
 && cp -a data /opt/ldcp/share/data \
 && if [ -n "${LIBTORCH_URL}" ]; then \
      cp -a /opt/libtorch/lib /opt/ldcp/lib/torch; \
    else \
      site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
      && mkdir -p /opt/ldcp/lib/torch && cp -a "${site}/torch/lib" /opt/ldcp/lib/torch/lib \
      && if [ -d "${site}/nvidia" ]; then cp -a "${site}/nvidia" /opt/ldcp/lib/nvidia; fi; \
    fi \
 && find /opt/ldcp/lib -name '*.so*' -printf '%h\n' | sort -u > /opt/ldcp/ld.so.conf \
 && strip --strip-debug /opt/ldcp/bin/*

# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VARIANT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The shared libraries the binaries load besides libtorch (tests/deploy checks this list
# against `ldd` of the built binaries).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libprometheus-cpp-core1.0 \
      libspdlog1.10 libfmt9 libpng16-16 libjpeg62-turbo libicu72 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ldcp \
 && useradd --system --uid 10001 --gid ldcp --home-dir /home/ldcp --create-home \
      --shell /usr/sbin/nologin ldcp \
 && install -d -o ldcp -g ldcp /models

COPY --from=build /opt/ldcp /opt/ldcp
# Every library resolves (the NVIDIA driver's libcuda.so.1 is mounted at run time by the
# NVIDIA container toolkit, and loaded by libtorch only when a GPU is used).
RUN cp /opt/ldcp/ld.so.conf /etc/ld.so.conf.d/ldcp.conf && ldconfig \
 && for b in /opt/ldcp/bin/*; do \
      if ldd "$b" | grep 'not found' | grep -v 'libcuda\.so'; then exit 1; fi; \
    done

ENV PATH=/opt/ldcp/bin:${PATH} \
    LDCP_DATA_DIR=/opt/ldcp/share/data \
    LDCP_DEVICE=${VARIANT} \
    LDCP_MODEL=/models/model \
    LDCP_LISTEN=0.0.0.0:50051 \
    LDCP_METRICS_LISTEN=0.0.0.0:9464 \
    LDCP_HEALTH_LISTEN=127.0.0.1:8081 \
    LDCP_TARGET=127.0.0.1:50051 \
    LDCP_LOG_FORMAT=json \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/home/ldcp

# The model folder is mounted at /models/model (read-only); a gates file too, with LDCP_GATES
# naming it. /models itself is empty and owned by the ldcp user, so that a new named volume
# mounted there is writable for `ldcp init-demo-model`. On the CPU the server needs
# LDCP_MEMORY_BUDGET (e.g. 8GiB).
WORKDIR /home/ldcp
USER 10001:10001
EXPOSE 50051 9464

# grpc.health.v1 Check on the plaintext health-only listener (LDCP_HEALTH_LISTEN, on loopback:
# nothing outside the container reaches it), so that it works whether the gRPC port speaks TLS
# or not; the client's TLS and token variables are unset, as the server's LDCP_TLS_CERT and
# LDCP_TLS_KEY would otherwise make it a TLS client too. Exit 0 when SERVING. Start-up loads the
# model and calibrates the memory cost model first, hence the long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
  CMD ["env", "-u", "LDCP_TLS", "-u", "LDCP_TLS_CA", "-u", "LDCP_TLS_CERT", "-u", "LDCP_TLS_KEY", \
       "-u", "LDCP_TLS_SERVER_NAME", "-u", "LDCP_TOKEN", "-u", "LDCP_TOKEN_FILE", \
       "ldcp-client", "health", "--target", "127.0.0.1:8081", "--timeout", "5"]

ENTRYPOINT ["ldcp-server"]
