"""docs/hardware.md and docs/wiring.svg say what the code does: the pins of the picture are the
config template's examples, each pin's BCM number sits at its place on the header, and the
HAT presets' table is the presets' own (pi_agent/decide/apa102.py)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from pi_agent.decide.apa102 import HAT_PRESETS
from pi_agent.reference import EXAMPLES

REPO = Path(__file__).resolve().parents[1]
SVG = REPO / "docs" / "wiring.svg"
GUIDE = REPO / "docs" / "hardware.md"
NS = "{http://www.w3.org/2000/svg}"
# The 40-pin header's GPIO pins (BCM number -> physical pin), as every Pi since the 1 B+ has it.
HEADER = {2: 3, 3: 5, 4: 7, 17: 11, 27: 13, 22: 15, 10: 19, 9: 21, 11: 23, 0: 27, 5: 29, 6: 31, 13: 33, 19: 35,
          26: 37, 14: 8, 15: 10, 18: 12, 23: 16, 24: 18, 25: 22, 8: 24, 7: 26, 1: 28, 12: 32, 16: 36, 20: 38, 21: 40}


def svg_texts() -> list[str]:
    return ["".join(t.itertext()) for t in ET.parse(SVG).getroot().iter(f"{NS}text")]


def test_the_picture_shows_the_template_example_pins() -> None:
    texts = svg_texts()
    for setting in ("leds.connection_pin", "leds.activity_pin", "leds.rgb_pins", "button.pin",
                    "button.volume_up_pin", "button.volume_down_pin"):
        value = EXAMPLES[setting]
        shown = f"{setting.split('.')[1]} = {value}".replace("'", "")
        assert shown in texts, (shown, [t for t in texts if "=" in t])


def test_every_gpio_label_is_at_its_header_pin() -> None:
    labels = [m.groups() for t in svg_texts() if (m := re.fullmatch(r"GPIO(\d+) \((\d+)\)", t))]
    assert len(labels) == 26  # the header's GPIOs but the two ID pins
    for bcm, pin in labels:
        assert HEADER[int(bcm)] == int(pin), (bcm, pin)


def test_the_guides_pin_table_matches_the_header_and_the_examples() -> None:
    rows = [r for r in GUIDE.read_text().splitlines() if r.startswith("| `[leds] ") or r.startswith("| `[button] ")]
    assert len(rows) == 7
    for row in rows[:-1]:  # the APA102 row names SPI0's pins
        cells = [c.strip() for c in row.strip("|").split("|")]
        setting = re.match(r"`\[(\w+)\] (\w+) = ([^`]+)`", cells[0])
        assert setting is not None, row
        section, name, value = setting.groups()
        assert str(EXAMPLES[f"{section}.{name}"]).replace("'", "") == value, row
        bcms = [int(n) for n in re.findall(r"\d+", cells[1])]
        pins = [int(n) for n in re.findall(r"\d+", cells[2])]
        assert [HEADER[b] for b in bcms] == pins, row


def test_the_presets_table_is_the_presets() -> None:
    text = GUIDE.read_text()
    for name, hat in HAT_PRESETS.items():
        row = next(r for r in text.splitlines() if r.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{hat.count} APA102", row
        assert f"`spi_device = {hat.spi_device}`" in cells[2], row
        assert (f"GPIO{hat.button_pin}" in cells[3]) if hat.button_pin is not None else cells[3] == "none", row
        assert (f"GPIO{hat.power_pin}" in cells[4]) if hat.power_pin is not None else cells[4] == "-", row


def test_the_readme_shows_the_picture_and_links_the_guide() -> None:
    readme = (REPO / "README.md").read_text()
    assert "](docs/wiring.svg)" in readme and "](docs/hardware.md)" in readme
