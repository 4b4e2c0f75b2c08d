"""Host-side helpers that turn a job config into prun command lines and HTCondor submit files."""
