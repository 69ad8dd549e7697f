# syntax=docker/dockerfile:1
# The node image of a study cluster (cluster/kuberay-rayjob.yaml, cluster/aws.yaml): Ray and every
# pinned dependency of itstudy, installed the way `make setup` installs them. The study's code is
# not in it: each `ray job submit` uploads the code (cluster/runtime_env.yaml), so a node never
# runs an older copy of the package than the one submitted.
#
#   docker build -t REGISTRY/itstudy:deps-gpu .                           # CUDA (the default)
#   docker build --build-arg VARIANT=cpu -t REGISTRY/itstudy:deps-cpu .   # CPU only
#
# VARIANT picks both the Ray base image and the torch build: gpu takes rayproject/ray's CUDA image
# and torch's default (CUDA) wheel; cpu takes the CPU image and torch's CPU wheel. Rebuild when
# pyproject.toml or constraints.txt changes (the tag can name their digest).
ARG VARIANT=gpu
FROM rayproject/ray:2.60.0-py311-${VARIANT}
ARG VARIANT

# torch first and exactly, then everything else under the constraints, so that no dependency
# moves torch or ray. The build context is mounted, not copied: after the install the package
# itself is uninstalled, leaving only its dependencies in the image.
RUN --mount=type=bind,target=/tmp/itstudy-src,rw \
    cd /tmp/itstudy-src \
    && if [ "$VARIANT" = cpu ]; then TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"; fi \
    && pip install --no-cache-dir $TORCH_INDEX torch==2.13.0 \
    && pip install --no-cache-dir -c constraints.txt . \
    && pip uninstall -y itstudy
