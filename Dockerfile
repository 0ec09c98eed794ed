# token-worker image: /app/token-worker, as the deployment guide's command expects.
# Build: docker build -t token-worker:0.1.0 .
FROM python:3.12-slim AS build
WORKDIR /src
COPY setup.cfg setup.py pyproject.toml README.md LICENSE ./
COPY token_worker/ token_worker/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid worker --no-create-home --shell /usr/sbin/nologin worker
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
COPY --chmod=0755 bin/token-worker /app/token-worker
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEALTH_PORT=8080
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/app/token-worker"]
CMD ["-config", "/app/configs/app.json"]
