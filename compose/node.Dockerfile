# farm-node image: nothing but the statically linked binary. Built by
# compose/build-images from a context holding `farm-node` and an empty `tmp/`.
FROM scratch
COPY --chown=65534:65534 tmp /tmp
COPY farm-node /farm-node
USER 65534:65534
ENV FARM_NODE_LISTEN=0.0.0.0:7000
EXPOSE 7000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/farm-node"]
