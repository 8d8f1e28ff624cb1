"""Benchmark pi-agent's daemon side by side with the official ElevenLabs SDK.

Not a test and not run by CI: a person runs it (``scripts/bench.py``, see ``cli.py`` for
the commands) on the tests' PulseAudio virtual sound card (``tests/support_audio.py``)
against the fake agent (``pi-agent fake-agent``, driven through ``tests/support_faults.py``),
to measure ``pi-agent run`` and the SDK's ``Conversation`` + ``DefaultAudioInterface`` the
same way, in the same run:

- ``compare``: a scripted conversation: mic-to-wire latency (a marker, a 40 ms chirp, enters
  the virtual mic -> the fake agent receives the chunk that holds it), speech onset to wire,
  playback start (the agent sends a turn's first chunk -> it is on the virtual speaker),
  barge-in (the agent sends ``interruption`` -> the speaker is silent), CPU per minute by
  thread, peak RSS, time to ready, underruns, gaps and lost frames;
- ``idle``: nobody talks to the device, in a silent room and in a room where people talk
  (not to it): CPU per minute by thread, wake-ups per second, peak RSS, for the daemon with
  each session policy and for the SDK;
- ``soak``: the daemon in a long accelerated conversation: RSS and open fds over time;
- ``profile``: py-spy on one scripted conversation.

Clocks: every time is ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on
the machine). The fake agent records its own timestamps and serves them over its HTTP test
API. Two recorders in this process (PortAudio input streams on the mic sink's and the
speaker sink's monitors, 10 ms buffers) stamp every buffer on arrival; a sample's time is
the earliest arrival seen around it (the lower envelope of ``arrival - index / rate``).

The modules: ``env`` (paths, logging), ``signals`` (markers, the scripted track),
``procs`` (/proc readings, processes), ``card`` (the sound card and its recorders),
``clients`` (the daemon, the SDK, the audio floor), ``conversation`` (one scripted run and
its analysis), ``report`` (figures, tables, the results file), and one module per command.
"""
