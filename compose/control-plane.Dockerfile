# control-plane image: nothing but the statically linked binary, serving the
# registry for nodes run elsewhere (`--runtime none`), its data under /data.
# Built by compose/build-images from a context holding `control-plane` and
# empty `tmp/` and `data/` folders.
FROM scratch
COPY --chown=65534:65534 tmp /tmp
COPY --chown=65534:65534 data /data
COPY control-plane /control-plane
USER 65534:65534
ENV FARM_LISTEN=0.0.0.0:50051 \
    FARM_DATA_DIR=/data \
    FARM_RUNTIME=none
EXPOSE 50051
STOPSIGNAL SIGTERM
ENTRYPOINT ["/control-plane"]
CMD ["serve"]
