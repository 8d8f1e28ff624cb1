-- pi-agent: keep one sound card out of the desktop's PipeWire (WirePlumber 0.4: Debian 12,
-- Raspberry Pi OS Bookworm). Installed by `sudo scripts/install.sh --own-card CARD` as
-- /etc/wireplumber/main.lua.d/51-pi-agent-card.lua, with @CARD@ replaced by the card's id or
-- name as `cat /proc/asound/cards` shows them ("seeed2micvoicec" or "seeed-2mic-voicecard").
-- WirePlumber then never opens the card: the pi-agent system service opens it through ALSA
-- without meeting "Device or resource busy", and the desktop keeps its other cards (HDMI).
-- Read at WirePlumber's start: log in again (or `systemctl --user restart wireplumber` as the
-- desktop user). Files in main.lua.d run in name order, after 50-alsa-config.lua.
table.insert(alsa_monitor.rules, {
  matches = {
    { { "api.alsa.card.id", "equals", "@CARD@" } },
    { { "api.alsa.card.name", "equals", "@CARD@" } },
  },
  apply_properties = {
    ["device.disabled"] = true,
  },
})
