"""A/B of ``registry.storage.remote.fastpipe``'s two speed-ups, interleaved in
one run, in CPU seconds of this process (steadier than wall time on a busy
machine). Not a test.

Usage: .venv/bin/python scripts/bench_fastpipe.py

* parser: 2000 AMP boxes carrying 60 KiB values (the size of a ``Write``),
  fed in 256 KiB chunks to ``amp.AMP`` and to ``FrameParsingAMP``;
* pipe: a child writes 256 MiB to its stdout pipe; this process reads it
  through Twisted's ``ProcessReader`` as is, and tuned by
  ``tune_child_pipes`` (what the supervisor does).
"""
import resource
import sys
from twisted.internet import reactor, defer
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols import amp
from registry.storage.remote.fastpipe import FrameParsingAMP, tune_child_pipes

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

def boxes(n, size):
    box = amp.AmpBox({b"_command": b"Write", b"_ask": b"1", b"data": b"x" * size})
    one = box.serialize()
    return one * n

class Sink:
    def __init__(self): self.n = 0
    def ampBoxReceived(self, box): self.n += 1

def parse(cls, wire, chunk=256 * 1024):
    p = cls(); p.boxReceiver = Sink()  # bypass dispatch
    p.locateResponder = None
    t = cpu()
    for i in range(0, len(wire), chunk):
        p.dataReceived(wire[i:i + chunk])
    spent = cpu() - t
    assert p.boxReceiver.n == 2000, (cls, p.boxReceiver.n)
    return spent

SIZE = 256 << 20
class Collect(ProcessProtocol):
    def __init__(self, tune): self.tune = tune; self.got = 0; self.ended = defer.Deferred()
    def connectionMade(self):
        if self.tune: tune_child_pipes(self.transport)
    def childDataReceived(self, fd, data): self.got += len(data)
    def processEnded(self, reason): self.ended.callback(None)

@defer.inlineCallbacks
def pipe(tune):
    code = f"import os,sys\nb=b'x'*(1<<20)\nfor _ in range({SIZE >> 20}): sys.stdout.buffer.write(b)\n"
    p = Collect(tune)
    t = cpu()
    reactor.spawnProcess(p, sys.executable, [sys.executable, "-c", code], env=None, childFDs={0: "w", 1: "r", 2: 2})
    yield p.ended
    assert p.got == SIZE
    return cpu() - t

@defer.inlineCallbacks
def main():
    wire = boxes(2000, 60 * 1024)  # ~120 MiB
    for rnd in range(3):
        a = parse(amp.AMP, wire); b = parse(FrameParsingAMP, wire)
        print(f"parser round {rnd}: amp.AMP {a:.3f} s CPU, FrameParsingAMP {b:.3f} s CPU, ratio {b/a:.2f}", flush=True)
    for rnd in range(3):
        a = yield pipe(False); b = yield pipe(True)
        print(f"pipe round {rnd}: 256 MiB read untuned {a:.3f} s CPU, tuned {b:.3f} s CPU, ratio {b/a:.2f}", flush=True)
    reactor.stop()
    return None

reactor.callWhenRunning(main)
reactor.run()
