"""The sans-I/O core of the agent connection.

- :mod:`.protocol`: decoding every server message to a typed event, encoding client messages;
- :mod:`.conversation`: the :class:`~.conversation.Engine`, fed frames and time, handing
  out events, actions, text frames and its next deadline;
- :mod:`.outbox`: the bounded queues of what waits for the wire;
- :mod:`.backoff`: the retry policy as data;
- :mod:`.events`: what the engine hands out;
- :mod:`.settings`: what it reads of the settings, a frozen value built by :mod:`pi_agent.config`.

Nothing here awaits, sleeps, reads the clock or imports a network library.
"""
