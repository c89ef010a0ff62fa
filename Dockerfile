# The quark and quark-broker executables on a slim Debian.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev libzstd-dev libsasl2-dev protobuf-compiler
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 libsasl2-2 libzstd1 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/quark /src/target/release/quark-broker /usr/local/bin/
ENTRYPOINT ["quark"]
