"""Each round: one train message with ``num-floats`` float32 values to every node, wait for
every reply; per-round seconds go to ``metrics-file`` (JSON lines, like fedlocal's)."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    c = context.run_config
    if c["fast-poll"]:  # the same reply polling fedlocal's ServerApp uses
        from server.grid import PollingGrid

        grid = PollingGrid(grid)
    while len(nodes := list(grid.get_node_ids())) < int(c["min-nodes"]):
        time.sleep(0.5)
    payload = ArrayRecord([np.zeros(int(c["num-floats"]), np.float32)])
    start = time.perf_counter()
    for server_round in range(1, int(c["rounds"]) + 1):
        t0 = time.perf_counter()
        messages = [Message(RecordDict({"arrays": payload}), dst_node_id=node,
                            message_type=MessageType.TRAIN) for node in nodes]
        replies = list(grid.send_and_receive(messages, timeout=600))
        if len(replies) != len(nodes) or any(r.has_error() for r in replies):
            raise RuntimeError(f"round {server_round}: {len(replies)} replies from {len(nodes)} nodes")
        ages = [float(r.content["metrics"]["process-seconds"]) for r in replies]
        record = {"round": server_round, "seconds": time.perf_counter() - t0,
                  "elapsed": time.perf_counter() - start, "process_seconds": sum(ages) / len(ages)}
        if c["metrics-file"]:
            with open(c["metrics-file"], "a") as f:
                f.write(json.dumps(record) + "\n")
