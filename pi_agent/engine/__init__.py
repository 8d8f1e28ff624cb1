"""The sans-I/O core of the agent connection.

- :mod:`.protocol`: the agent protocol as one namespace, re-exporting
  :mod:`.server_messages` (every server message, a typed value), :mod:`.decoding` (a
  frame to a message) and :mod:`.client_messages` (encoding what the daemon sends);
- :mod:`.formats`: the agent's audio formats (names, rates, encodings);
- :mod:`.conversation`: the :class:`~.conversation.Engine`, fed frames and time, handing
  out events, actions, text frames and its next deadline; :mod:`.receiving` is its
  receiving half (the one dispatch over server messages), :mod:`.connection` one
  connection's record and what its end means;
- :mod:`.outbox`: the bounded queues of what waits for the wire;
- :mod:`.backoff`: the retry policy as data;
- :mod:`.events`: what the engine hands out;
- :mod:`.settings`: what it reads of the settings, a frozen value built by :mod:`pi_agent.config`.

Nothing here awaits, sleeps, reads the clock or imports a network library.
"""
