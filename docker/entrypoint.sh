#!/bin/sh
# The image's entrypoint.  `docker run IMAGE run ...` gives payload's own arguments; HTCondor's
# docker universe keeps the entrypoint and passes its `executable` first
# (`IMAGE /opt/payload/bin/payload run ...`), as does `docker run IMAGE payload ...`: a first word
# that is a command is run as it is.  Apptainer bypasses the entrypoint and runs the executable.
case "$1" in
    payload | /*) exec "$@" ;;
    *) exec payload "$@" ;;
esac
