# knee-node: the DICOM node with its bundled model.  CPU by default; on a GPU host the same image uses CUDA
# (torch's Linux wheels carry the CUDA runtime) when the container is given the GPU.
FROM python:3.11-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 node
WORKDIR /opt/knee-node
COPY pyproject.toml README.md ./
COPY node ./node
COPY models ./models
# Editable: the bundled model is found beside the package (models/), as in a checkout.
RUN pip install --no-cache-dir torch==2.14.1 && pip install --no-cache-dir -e .

USER node
ENV KNEE_NODE_DATA_DIR=/data \
    KNEE_NODE_METRICS_BIND_ADDRESS=0.0.0.0
VOLUME ["/data"]
EXPOSE 11112 9464
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz')"
ENTRYPOINT ["knee-node"]
CMD ["serve"]
