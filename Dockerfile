# One image for the worker, the trainer and the load generator.
#   docker build -t gmm-stream .                              # CPU JAX (default)
#   docker build --build-arg JAX_EXTRA=cuda12 -t gmm-stream:cuda .   # CUDA JAX for GPU hosts
FROM python:3.11-slim-bookworm

ARG JAX_EXTRA=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mixture ./mixture
COPY wire ./wire
COPY kafka_common ./kafka_common
COPY stream_app ./stream_app
COPY trainer ./trainer
COPY producer ./producer
RUN pip install . \
 && if [ -n "$JAX_EXTRA" ]; then pip install "jax[$JAX_EXTRA]==0.10.2"; fi \
 && useradd --uid 10001 --create-home app \
 && mkdir -p /reports /tmp/gmm-worker && chown app /reports /tmp/gmm-worker

USER app
ENV GMM_REPORTS_DIR=/reports
EXPOSE 6066 6067
# The worker by default; compose runs the trainer and the producer from the same image.
CMD ["gmm-worker"]
