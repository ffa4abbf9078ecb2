"""Tensor parallelism inside one replica: who this process is in the group, and the collectives layers call."""
