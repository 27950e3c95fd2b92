"""Reply with the arrays received: no imports beyond flwr, no compute."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return Message(content=msg.content, reply_to=msg)
