# One image for the server, worker and beat (the trainer runs on pods, not here).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openssh-client curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY server server
COPY worker worker
COPY web web
COPY app app
COPY cli cli
COPY migrations migrations
COPY trainer trainer
RUN pip install --no-cache-dir -e .
ENV CADDIE_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["caddie", "up", "--host", "0.0.0.0"]
