# The root filesystem of Membrane's managed plugin (see scripts/build-plugin.sh, which stages the
# build context and turns the image into a plugin with config.json).
#
# BASE defaults to Debian's image; where no registry is reachable, build-plugin.sh makes the same
# base locally with debootstrap (with iptables and libmnl0 already in it) and passes it here.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN if ! command -v iptables >/dev/null || [ ! -e /usr/lib/x86_64-linux-gnu/libmnl.so.0 ] || [ ! -e /usr/lib/x86_64-linux-gnu/libbpf.so.1 ]; then \
      apt-get update && apt-get install -y --no-install-recommends iptables libmnl0 libbpf1 libelf1 && rm -rf /var/lib/apt/lists/*; \
    fi
# Node 20 is not in bookworm; the staged binary is the one Membrane was built and tested with.
COPY stage/node /usr/local/bin/node
COPY stage/membrane /opt/membrane
RUN mkdir -p /run/docker/plugins /var/lib/membrane /run/membrane /host/proc/sys/net
ENTRYPOINT ["/usr/local/bin/node", "/opt/membrane/dist/plugin/cli/main.js", "daemon"]
