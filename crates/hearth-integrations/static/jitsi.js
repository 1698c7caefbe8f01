"use strict";
// Frames the operator's Jitsi Meet for a widget written in Element's form:
// conference in the fragment (conferenceDomain, conferenceId, isAudioOnly,
// displayName ...), the legacy confId in the query.
(() => {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  // A client that does not fill templates leaves "$name" in place.
  const value = (p, k) => { const v = p.get(k); return v && !v.startsWith("$") ? v : ""; };
  const allowed = document.body.dataset.domain;
  const domain = value(hash, "conferenceDomain") || allowed;
  const conference = value(hash, "conferenceId") || value(query, "confId");
  const problem = (text) => { const p = document.getElementById("problem"); p.textContent = text; p.hidden = false; };
  if (domain !== allowed) return problem("This conference is on another Jitsi server than this one, " + allowed + ".");
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(conference)) return problem("This widget names no valid conference.");
  // Jitsi reads its fragment with decodeURIComponent and JSON values:
  // spaces must be %20, never the "+" of form encoding.
  const settings = [];
  const name = value(hash, "displayName") || value(query, "displayName");
  if (name) settings.push("userInfo.displayName=" + encodeURIComponent(JSON.stringify(name)));
  if (value(hash, "isAudioOnly") === "true") settings.push("config.startAudioOnly=true", "config.startWithVideoMuted=true");
  const frame = document.createElement("iframe");
  frame.title = "Jitsi Meet conference " + conference;
  frame.allow = "camera; microphone; display-capture; autoplay; clipboard-write; fullscreen";
  frame.src = "https://" + allowed + "/" + encodeURIComponent(conference) + "#" + settings.join("&");
  document.body.appendChild(frame);
})();
