# syntax=docker/dockerfile:1.7
# The run image of both code locations (emilia_forge on CPU pods, emilia_gpu on 8-GPU pods): the whole project with
# its GPU runtime, the production models, a non-root user, and `dagster api grpc` as entry point.
#
#   docker build -t emilia-forge:$(git rev-parse --short HEAD) .                       # models baked in (needs the
#       --secret id=hf_token,env=HF_TOKEN                                                 gated pyannote licence)
#   docker build --build-arg FETCH_MODELS=0 -t emilia-forge:... .                      # models from a volume instead:
#                                                                                       mount it, set EMILIA_MODELS_DIR
#
# GPU libraries: torch 2.14.1 and onnxruntime-gpu 1.31.1 bring their own CUDA 13 libraries as wheels; CTranslate2
# 4.8.5 (faster-whisper) dlopens libcublas.so.12, which this CUDA 12 base provides, with cuDNN 9. The node's driver
# must serve CUDA 13 (R580 or newer). `emilia-forge doctor --load` checks all of it on a GPU node.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ghcr.io/astral-sh/uv:0.9.7 AS uv

FROM ${CUDA_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    PYANNOTE_METRICS_ENABLED=false \
    HF_HUB_DISABLE_TELEMETRY=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install 3.11 && uv venv /opt/venv --python 3.11

WORKDIR /opt/dagster/app
# Dependencies first (a layer that survives code changes), then the project itself.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d['dependencies'] + d['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
 && uv pip install -r /tmp/requirements.txt
COPY . .
# faster-whisper requires `onnxruntime` by name, and onnxruntime-gpu installs the same module: install the project
# with the `gpu` extra, drop the CPU wheel, then put the GPU wheel's files back.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --no-deps ".[gpu]" \
 && uv pip uninstall onnxruntime \
 && uv pip install --reinstall --no-deps "onnxruntime-gpu==1.31.1"

# Production models, cached at build time (FETCH_MODELS=0: mount them at run time and set EMILIA_MODELS_DIR).
ARG FETCH_MODELS=1
ENV EMILIA_MODELS_DIR=/opt/models
RUN --mount=type=secret,id=hf_token,required=false \
    if [ "$FETCH_MODELS" = "1" ]; then \
      HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" emilia-forge models fetch /opt/models; \
    else mkdir -p /opt/models; fi

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin emilia \
 && mkdir -p "$DAGSTER_HOME" /opt/dagster/work \
 && chown -R emilia:emilia "$DAGSTER_HOME" /opt/dagster/work /opt/models
ENV EMILIA_WORK_DIR=/opt/dagster/work
USER emilia

# Imports every stage and lists what the GPU libraries see; fails when a configured CUDA stage cannot be had.
HEALTHCHECK --interval=10m --timeout=2m --start-period=1m CMD ["emilia-forge", "doctor"]
EXPOSE 3030
# One image, two code locations: this CMD serves emilia_forge; the GPU location's server runs the same image with
# `-m emilia_assets.gpu_definitions` (deploy/values.yaml sets both through the Helm chart's dagsterApiGrpcArgs).
ENTRYPOINT ["tini", "--", "dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030"]
CMD ["-m", "emilia_assets.definitions"]
