"""The exit status of ``pretrain.train`` (and of ``pretrain.torchrun``, which passes it on), for job scripts.

No torch import here: the torchrun wrapper reads these before torch is loaded.
"""

USER_ERROR = 2  # bad config, data or checkpoint: one line says what to change; relaunching as is fails again
REQUEUE = 75  # EX_TEMPFAIL: preempted after saving a checkpoint; relaunch the same command to resume
HANG = 76  # a rank made no progress for parallel.collective_timeout_s (pretrain/hang_watch.py): relaunch to resume
PEER_LOST = 3  # this rank stopped because another rank of the job died; the launcher's line names that rank
