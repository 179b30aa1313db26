"""The channels: each turns its platform's message into an IncomingMessage and renders the Reply."""
