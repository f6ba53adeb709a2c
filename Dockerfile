FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trackd ./trackd
COPY ingest ./ingest
COPY api ./api
COPY stream ./stream
COPY dashboards ./dashboards
RUN pip install --no-cache-dir . && useradd --system --uid 10001 trackd
USER trackd
EXPOSE 8080
ENTRYPOINT ["trackd"]
CMD ["serve"]
