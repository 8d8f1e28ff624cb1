"""The pure decision core: what the daemon does about every input.

- :mod:`.states`: the state machine, one transition table;
- :mod:`.model`: the immutable model (the state and every fact the decisions need);
- :mod:`.inputs`: what goes in besides the engine's events (gate, button, API, devices, time);
- :mod:`.effects`: what comes out, as data (flush, earcon, play, send, gate command, publish, log);
- :mod:`.decide`: ``decide(model, input, now) -> (model, effects)``.

Nothing here does I/O, reads the clock or holds a mutable object: the controller
(:mod:`pi_agent.controller`) feeds it and carries the effects out.
"""
