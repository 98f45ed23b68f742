# uanet: one image, three services (`uanet serve publisher|subscriptions|dispatcher`) and
# `uanet migrate`. Built by docker-compose.yml; runs as a non-root user.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY shared ./shared
COPY rendering ./rendering
COPY services ./services
COPY devtools ./devtools
COPY uanet_cli ./uanet_cli
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home uanet
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER uanet
EXPOSE 8001 8002 8003
# uvicorn stops gracefully on SIGTERM (`docker stop`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["uanet"]
CMD ["serve", "publisher"]
