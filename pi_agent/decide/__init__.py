"""The pure decision core: what the daemon does about every input.

- :mod:`.states`: the state machine, one transition table;
- :mod:`.model`: the immutable model (the state and every fact the decisions need);
- :mod:`.inputs`: what goes in besides the engine's events (gate, button, API, devices, time);
- :mod:`.effects`: what comes out, as data (flush, earcon, play, send, gate command, publish, log);
- :mod:`.button`: the button's gestures (edges and times in) and what they mean in each state;
- :mod:`.leds`: the LED picture of a status;
- :mod:`.decide`: ``decide(model, input, now) -> (model, effects)``, the one entry point and dispatch;
  its rules by owner: :mod:`.turn` (the user's turn, button, mute), :mod:`.reply` (the agent's
  reply, the speaker), :mod:`.link` (the conversation's link), :mod:`.tools` (tool calls), and
  :mod:`.step` (a decision in the making).

Nothing here does I/O or reads the clock, and the model holds no mutable object: the controller
(:mod:`pi_agent.controller`) feeds it and carries the effects out. It imports nothing of
the drivers (audio, gpio, net, service) nor of the settings (``tests/test_layers.py``).
"""
