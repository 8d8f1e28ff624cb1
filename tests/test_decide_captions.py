"""The captions of the current exchange in the model (issue 23): folded from what the decisions
publish, as the page draws them; kept while the conversation is open and ``page_hold`` seconds
after it ends, then cleared (and the page told), bounded in size."""

from __future__ import annotations

from dataclasses import replace

from pi_agent.decide import effects as fx
from pi_agent.decide import inputs as i
from pi_agent.decide.captions import fold, shown
from pi_agent.decide.decide import decide
from pi_agent.decide.model import MAX_CAPTION_LINES, MAX_CAPTION_TEXT, Captions, Config, Link, Model, deadline
from pi_agent.decide.states import State
from pi_agent.engine import events as ev
from pi_agent.engine.backoff import Outcome

OPEN = Model(config=Config("vad", page_hold=60.0), state=State.LISTENING, link=Link.OPEN, conversation_id="c1",
             in_turn=True)


def run(model: Model, *events: object, now: float = 0.0) -> tuple[Model, list[fx.Effect]]:
    effects: list[fx.Effect] = []
    for event in events:
        model, out = decide(model, event, now)  # type: ignore[arg-type]
        effects += out
    return model, effects


def test_an_exchange_is_kept_as_the_page_shows_it_cut_where_interrupted() -> None:
    model, _ = run(OPEN, ev.UserTranscript("What is the weather?", 1),
                   ev.AgentTextPart("start", "", 2), ev.AgentTextPart("delta", "It is ", 2))
    assert shown(model.captions) == [{"who": "user", "text": "What is the weather?", "cut": False, "done": True},
                                     {"who": "agent", "text": "It is ", "cut": False, "done": False}]
    assert model.captions.clear_at is None  # open: kept
    model, _ = run(model, ev.AgentTextPart("delta", "sunny", 2), ev.Interrupted(3),
                   ev.AgentTextPart("delta", " and warm", 2), ev.AgentResponse("It is sunny and warm.", 2))
    assert shown(model.captions)[-1] == {"who": "agent", "text": "It is sunny", "cut": True, "done": True}
    model, _ = run(model, ev.AgentCorrection("It is sunny and warm.", "It is sunny", 2))
    assert shown(model.captions)[-1]["text"] == "It is sunny"


def test_cleared_page_hold_seconds_after_the_conversation_ends_and_the_page_is_told() -> None:
    model, _ = run(OPEN, ev.UserTranscript("Hello", 1), ev.AgentResponse("Hi there.", 2))
    model, _ = run(model, ev.Closed(Outcome.CLOSED, "idle", None, None, True, 30.0), now=100.0)
    assert model.captions.clear_at == 160.0 and deadline(model) == 160.0
    assert len(model.captions.lines) == 2  # still shown within page_hold
    model, effects = run(model, i.Tick(), now=159.0)
    assert model.captions.lines and not [e for e in effects if isinstance(e, fx.Publish)]
    model, effects = run(model, i.Tick(), now=160.0)
    assert model.captions == Captions() and deadline(model) is None
    assert fx.Publish({"type": "captions_cleared"}) in effects


def test_a_conversation_that_stays_open_ends_its_exchange_when_idle() -> None:
    persistent = replace(OPEN, config=Config("vad", page_hold=10.0, persistent=True), state=State.SPEAKING)
    model, _ = run(persistent, ev.AgentResponse("Bye.", 2), now=5.0)
    assert model.captions.clear_at is None  # still speaking
    model = replace(model, state=State.IDLE)
    model, _ = run(model, i.Tick(), now=6.0)
    assert model.captions.clear_at == 16.0


def test_the_captions_are_bounded() -> None:
    c = Captions()
    for _ in range(50):
        c = fold(c, {"type": "user_transcript", "text": "x" * 10_000})
        c = fold(c, {"type": "agent_response_part", "part": "delta", "text": "y" * 10_000})
        c = fold(c, {"type": "agent_response_part", "part": "delta", "text": "y" * 10_000})
    assert len(c.lines) == MAX_CAPTION_LINES and all(len(line.text) <= MAX_CAPTION_TEXT for line in c.lines)
    assert fold(c, {"type": "state", "state": "idle"}) is c
    assert fold(Captions(), {"type": "user_transcript", "text": None}).lines[0].text == ""
