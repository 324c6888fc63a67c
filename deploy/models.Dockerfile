# The model repository as an image, for Kubernetes (deploy/k8s): the folder `kiln repo write`
# wrote, layered on the kiln image so a node that has kiln pulls only this layer. The init
# container of deploy/k8s/base/deployment.yaml copies /repository into the pod's models volume.
#
#   docker build -f deploy/models.Dockerfile -t kiln-models deploy/models
ARG KILN_IMAGE=localhost/kiln:latest
FROM ${KILN_IMAGE}
COPY --chown=10001:10001 . /repository/
