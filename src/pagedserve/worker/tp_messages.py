"""The messages between the engine and tensor-parallel rank 0 (and rank 0's broadcasts): msgspec structs, never
pickle, so a connection only ever yields these types."""

from __future__ import annotations

import msgspec

from pagedserve.core.scheduler_output import SchedulerOutput
from pagedserve.worker.executor import RunnerInfo, RunnerSpec
from pagedserve.worker.runner_output import ModelRunnerOutput

# How long a rank waits for the others to join the group and for the engine's first message.
JOIN_TIMEOUT_S = 300.0


class Load(msgspec.Struct, tag=True):
    spec: RunnerSpec


class Step(msgspec.Struct, tag=True):
    scheduler_output: SchedulerOutput


class Shutdown(msgspec.Struct, tag=True):
    pass


class KeepAlive(msgspec.Struct, tag=True):
    """Rank 0 to the other ranks while the engine is idle (tp_worker.py says why); never from the engine."""


class Ready(msgspec.Struct, tag=True):
    info: RunnerInfo


class Result(msgspec.Struct, tag=True):
    output: ModelRunnerOutput


class Failed(msgspec.Struct, tag=True):
    rank: int
    error: str


_encoder = msgspec.msgpack.Encoder()
_for_worker = msgspec.msgpack.Decoder(Load | Step | Shutdown | KeepAlive)
_for_engine = msgspec.msgpack.Decoder(Ready | Result | Failed)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_for_worker(data: bytes) -> Load | Step | Shutdown | KeepAlive:
    return _for_worker.decode(data)


def decode_for_engine(data: bytes) -> Ready | Result | Failed:
    return _for_engine.decode(data)
