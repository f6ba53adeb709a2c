FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trackd ./trackd
COPY ingest ./ingest
COPY stream ./stream
COPY notify ./notify
COPY api ./api
COPY serve ./serve
COPY dashboards ./dashboards
COPY lab ./lab
RUN pip install --no-cache-dir . && useradd --system --uid 10001 trackd
USER trackd
EXPOSE 8080
ENTRYPOINT ["trackd"]
CMD ["serve"]
