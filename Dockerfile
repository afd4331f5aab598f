# The Sightline services image (ingest, query, replay, and the one-shot migrate job).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY services ./services
COPY alembic ./alembic
COPY infra ./infra
RUN pip install --no-cache-dir -e . && useradd --system --no-create-home sightline
USER sightline
# Inside a container the service must listen on all interfaces.
ENV SIGHTLINE_HOST=0.0.0.0
ENTRYPOINT ["sightline"]
CMD ["serve", "ingest"]
