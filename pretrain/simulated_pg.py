"""Process groups that record every collective: a simulated one for dry runs, a counting one around gloo.

``SimulatedProcessGroup`` (backend ``"simulated"``) lets one process stand for one rank of a job of any
size: no peers, no network. Its collectives assume every rank holds the same data as this one (a
symmetric job: same shapes) and that expert routing is balanced on average, so each output is what
that job would produce:

    all_gather        the input, once per rank
    reduce_scatter    this rank's chunk, times the group size for SUM (unchanged for AVG/MAX/MIN)
    all_reduce        times the group size for SUM (unchanged otherwise)
    all_to_all        from each peer, the block this rank sends that peer (received = sent: as many
                      token-expert pairs arrive as leave, whatever the probe's few tokens chose)
    broadcast, scatter, barrier  nothing to move (every rank already holds the same values)

So the training step runs unchanged on top of it, expert-parallel split sizes included (they are read
from an all_to_all of counts), and the numbers stay finite. torch's ``fake`` backend leaves outputs
untouched (uninitialised memory), which breaks exactly those reads.

``CountingProcessGroup`` (backend ``"counting_gloo"``) delegates to a real gloo group and records the
same entries: the N = 2 tests compare a dry run's record with a real 2-process run's.

Each record: kind (all_gather | reduce_scatter | all_reduce | all_to_all | broadcast | scatter | barrier), the
group's global ranks, and the bytes this rank sends into the collective (its input buffer) and the bytes
of its output buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.futures import Future

SIMULATED, COUNTING = "simulated", "counting_gloo"
_ADDITIVE = (dist.ReduceOp.SUM,)


@dataclass
class Collective:
    kind: str
    ranks: tuple[int, ...]
    in_bytes: int
    out_bytes: int


@dataclass
class Ledger:
    """Every collective this process took part in, in order (``start``/``stop`` bracket a measured span)."""

    records: list[Collective] = field(default_factory=list)
    on: bool = False

    def add(self, pg: dist.ProcessGroup, kind: str, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        if self.on:
            ranks = tuple(dist.get_process_group_ranks(pg))
            self.records.append(Collective(kind, ranks, _nbytes(ins), _nbytes(outs)))


LEDGER = Ledger()


def _nbytes(ts) -> int:
    total = 0
    for t in ts:
        if isinstance(t, (list, tuple)):
            total += _nbytes(t)
        elif t is not None:
            total += t.numel() * t.element_size()
    return total


class _Done(dist._Work):
    """A completed Work (every simulated collective finishes on the spot)."""

    def __init__(self, result=None) -> None:
        super().__init__()
        self._fut: Future = Future()
        self._fut.set_result(result)

    def wait(self, timeout=None) -> bool:
        return True

    def get_future(self) -> Future:
        return self._fut


def _reduce_factor(opts, n: int) -> int:
    op = getattr(opts, "reduceOp", dist.ReduceOp.SUM)
    return n if op in _ADDITIVE else 1


class _Named(dist.ProcessGroup):
    """A Python process group registered with c10d (collectives look groups up by name)."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__(rank, size)  # type: ignore[call-arg]  # the (rank, size) overload, missing from the stubs
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    @property
    def group_name(self) -> str:  # type: ignore[override]  # a method in the stubs, an attribute to c10d
        return dist.distributed_c10d._world.pg_names[self]


class SimulatedProcessGroup(_Named):
    def getBackendName(self) -> str:
        return SIMULATED

    def all_gather_single(self, out, inp, opts=None):
        LEDGER.add(self, "all_gather", [inp], [out])
        out.view(self._size, -1).copy_(inp.reshape(1, -1).clone())  # FSDP's input is a view of out
        return _Done([out])

    def allgather(self, outs, ins, opts=None):
        LEDGER.add(self, "all_gather", ins, outs)
        for o_list, i in zip(outs, ins):
            i = i.clone()
            for o in o_list:
                o.copy_(i)
        return _Done(outs)

    def reduce_scatter_single(self, out, inp, opts=None):
        LEDGER.add(self, "reduce_scatter", [inp], [out])
        out.copy_(inp.reshape(self._size, -1)[self._rank].view_as(out) * _reduce_factor(opts, self._size))
        return _Done([out])

    def reduce_scatter(self, outs, ins, opts=None):
        LEDGER.add(self, "reduce_scatter", ins, outs)
        for o, i_list in zip(outs, ins):
            o.copy_(i_list[self._rank] * _reduce_factor(opts, self._size))
        return _Done(outs)

    def allreduce(self, tensors, opts=None):
        LEDGER.add(self, "all_reduce", tensors, tensors)
        factor = _reduce_factor(opts, self._size)
        if factor != 1:
            for t in tensors:
                t.mul_(factor)
        return _Done(tensors)

    def allreduce_coalesced(self, tensors, opts=None):
        return self.allreduce(tensors, opts)

    def all_to_all_single(self, out, inp, out_splits, in_splits, opts=None):
        LEDGER.add(self, "all_to_all", [inp], [out])
        if out.shape == inp.shape:  # every peer sends back what this rank sends it: received = sent
            out.copy_(inp)
        else:  # split sizes that are not the mirror's (a caller's own choice): shapes only
            out.zero_()
        return _Done([out])

    def alltoall(self, outs, ins, opts=None):
        LEDGER.add(self, "all_to_all", ins, outs)
        for o, i in zip(outs, ins):
            o.copy_(i)
        return _Done(outs)

    def broadcast(self, tensors, opts=None):
        LEDGER.add(self, "broadcast", tensors, tensors)
        return _Done(tensors)

    def scatter(self, outs, ins, opts=None):
        LEDGER.add(self, "scatter", ins, outs)
        if ins:  # the source holds the pieces; elsewhere every rank already holds the same full tensor
            outs[0].copy_(ins[0][self._rank])
        return _Done(outs)

    def barrier(self, opts=None):
        LEDGER.add(self, "barrier", [], [])
        return _Done()


class CountingProcessGroup(_Named):
    """A real gloo group that records its collectives in ``LEDGER`` like the simulated one."""

    def __init__(self, store, rank: int, size: int, timeout) -> None:
        super().__init__(rank, size)
        self._gloo = dist.ProcessGroupGloo(store, rank, size, timeout)

    def getBackendName(self) -> str:
        return COUNTING

    def all_gather_single(self, out, inp, opts=None):
        LEDGER.add(self, "all_gather", [inp], [out])
        return self._gloo._allgather_base(out, inp)

    def allgather(self, outs, ins, opts=None):
        LEDGER.add(self, "all_gather", ins, outs)
        return self._gloo.allgather(outs, ins)

    def reduce_scatter_single(self, out, inp, opts=None):
        LEDGER.add(self, "reduce_scatter", [inp], [out])
        return self._gloo._reduce_scatter_base(out, inp, _rs_opts(opts))

    def reduce_scatter(self, outs, ins, opts=None):
        LEDGER.add(self, "reduce_scatter", ins, outs)
        return self._gloo.reduce_scatter(outs, ins, _rs_opts(opts))

    def allreduce(self, tensors, opts=None):
        LEDGER.add(self, "all_reduce", tensors, tensors)
        return self._gloo.allreduce(tensors, _ar_opts(opts))

    def allreduce_coalesced(self, tensors, opts=None):
        return self.allreduce(tensors, opts)

    def all_to_all_single(self, out, inp, out_splits, in_splits, opts=None):
        LEDGER.add(self, "all_to_all", [inp], [out])
        return self._gloo.alltoall_base(out, inp, list(out_splits), list(in_splits))

    def alltoall(self, outs, ins, opts=None):
        LEDGER.add(self, "all_to_all", ins, outs)
        return self._gloo.alltoall(outs, ins)

    def broadcast(self, tensors, opts=None):
        LEDGER.add(self, "broadcast", tensors, tensors)
        b = dist.BroadcastOptions()
        b.rootRank = opts.rootRank if opts is not None else 0
        return self._gloo.broadcast(tensors, b)

    def scatter(self, outs, ins, opts=None):
        LEDGER.add(self, "scatter", ins, outs)
        s = dist.ScatterOptions()
        s.rootRank = opts.rootRank if opts is not None else 0
        return self._gloo.scatter(outs, ins, s)

    def barrier(self, opts=None):
        LEDGER.add(self, "barrier", [], [])
        return self._gloo.barrier()


def _ar_opts(opts):
    o = dist.AllreduceOptions()
    if opts is not None:
        o.reduceOp = opts.reduceOp
    return o


def _rs_opts(opts):
    o = dist.ReduceScatterOptions()
    if opts is not None:
        o.reduceOp = opts.reduceOp
    return o


def _create_simulated(store, rank, size, timeout):
    return SimulatedProcessGroup(rank, size)


def _create_counting(store, rank, size, timeout):
    return CountingProcessGroup(store, rank, size, timeout)


def register() -> None:
    """Make both backends known to ``dist.init_process_group`` (idempotent)."""
    for name, create in ((SIMULATED, _create_simulated), (COUNTING, _create_counting)):
        if not hasattr(dist.Backend, name.upper()):
            dist.Backend.register_backend(name, create, devices=["cpu"])
