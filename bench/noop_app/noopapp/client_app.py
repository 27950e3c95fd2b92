"""Reply with the arrays received and this process's age: no imports beyond flwr, no compute."""

import os

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
        started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        age = float(uptime.read().split()[0]) - started
    msg.content["metrics"] = MetricRecord({"process-seconds": age})
    return Message(content=msg.content, reply_to=msg)
