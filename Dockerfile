# ckpt-convert: one image for the API and the workers.
#   docker build -t ckpt-convert .                                     (CPU torch)
#   docker build -t ckpt-convert --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .   (GPU workers)
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# torch first, from the chosen index (an unpinned torch from PyPI is a multi-GB CUDA build)
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY converter ./converter
COPY service ./service
COPY jobs ./jobs
COPY worker ./worker
RUN pip install . \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /data \
    && chown app /data

USER app
EXPOSE 8000
# the API; docker-compose.yml runs the workers from the same image with the Celery command
CMD ["python", "-m", "uvicorn", "service.app:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--workers", "2"]
