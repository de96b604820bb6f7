# sweeplab: the server, the workers and the CLI in one image (see docker-compose.yml).
#   docker build -t sweeplab .
#   docker run --rm -p 127.0.0.1:8000:8000 -v sweeplab-data:/data sweeplab sweeplab up --host 0.0.0.0 --workers 2
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    SWEEPLAB_DATABASE_URL=sqlite:////data/sweeplab.db \
    SWEEPLAB_DATA_DIR=/data/datasets \
    SWEEPLAB_ARTIFACTS_DIR=/data/artifacts

WORKDIR /app

# Debian's Chromium for PDF reports (Playwright drives it; never a downloaded browser).
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: code changes do not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN mkdir -p app worker sweeplab \
    && touch app/__init__.py worker/__init__.py sweeplab/__init__.py \
    && pip install ".[train,report]" \
    && pip uninstall -y sweeplab

# The project itself. Installed in place (-e) because it serves its templates, static files,
# presets and migrations from the source tree.
COPY . .
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 sweeplab \
    && mkdir -p /data/datasets /data/artifacts \
    && chown -R sweeplab:sweeplab /data

USER sweeplab
# The SQLite database (one-host setups), datasets (<name>.npz) and the workers' scratch files.
# Run artifacts themselves are stored in the database, so no other volume has to be shared.
VOLUME ["/data"]
EXPOSE 8000

# Python runs as PID 1 and handles SIGTERM itself: workers release their runs, `up` stops its children.
CMD ["sweeplab", "up", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]
