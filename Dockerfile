# First version of the run image (issue "Scale-out" adds the GPU runtime, onnxruntime-gpu and cached models).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dagster/app
COPY pyproject.toml README.md ./
COPY emilia_assets emilia_assets
COPY emilia_pipe emilia_pipe
COPY resources resources
COPY sensors sensors
COPY workspace.yaml dagster_cloud.yaml ./
RUN pip install --no-cache-dir .
ENV PYANNOTE_METRICS_ENABLED=false DAGSTER_HOME=/opt/dagster/dagster_home
EXPOSE 3030
# One image, two code locations: this CMD serves emilia_forge; the GPU location's server runs the same image with
# `-m emilia_assets.gpu_definitions` (deploy/values.yaml sets both through the Helm chart's dagsterApiGrpcArgs).
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "emilia_assets.definitions"]
