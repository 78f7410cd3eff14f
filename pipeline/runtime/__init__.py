"""The one stream runtime of the project (docs/stream-runtime.md): confluent-kafka, transactions, changelogs.

Processors (``PartitionProcessor``) hold the logic of one input partition; the runtime
(``StreamRuntime``) owns the consumer group, restores state, and commits each batch's outputs,
state changes and input offsets in one Kafka transaction.
"""

from pipeline.runtime.engine import FencedError, RuntimeConfig, StreamRuntime
from pipeline.runtime.processor import Effects, Output, PartitionProcessor, ProcessorFactory, Record, Topology
from pipeline.runtime.state import MemoryBackend, PartitionStore, RocksBackend

__all__ = [
    "Effects",
    "FencedError",
    "MemoryBackend",
    "Output",
    "PartitionProcessor",
    "PartitionStore",
    "ProcessorFactory",
    "Record",
    "RocksBackend",
    "RuntimeConfig",
    "StreamRuntime",
    "Topology",
]
