"use strict";
// Hearth's integration manager UI. Everything that touches the room goes
// through Element's ScalarMessaging postMessage API: requests to
// window.parent with an `action`, no `api` field (that marks Widget API
// traffic, which Element's listener ignores) and our own `request_id`;
// Element echoes the request with `response` added, which we match by id.
(() => {
  const $ = (s, root = document) => root.querySelector(s);
  const $$ = (s, root = document) => Array.from(root.querySelectorAll(s));
  const params = new URLSearchParams(location.search);
  const token = params.get("scalar_token") || "";
  const roomId = params.get("room_id") || "";
  const roomName = params.get("room_name") || "";
  const integId = params.get("integ_id") || "";
  const config = JSON.parse(document.body.dataset.config);
  const view = document.body.dataset.view;
  const status = $("#status");

  const say = (text, kind) => {
    status.textContent = text;
    status.className = kind || "";
  };

  // Element answers to event.origin, so it learns ours; we send only to the
  // origin that framed us when the browser tells us which.
  const parentOrigin = (() => {
    if (location.ancestorOrigins && location.ancestorOrigins.length) return location.ancestorOrigins[0];
    try { return new URL(document.referrer).origin; } catch (_) { return "*"; }
  })();
  const pending = new Map();
  let sequence = 0;

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent) return;
    if (parentOrigin !== "*" && event.origin !== parentOrigin) return;
    const data = event.data;
    if (!data || typeof data !== "object" || !("response" in data)) return;
    const waiting = pending.get(data.request_id);
    if (!waiting || data.action !== waiting.action) return;
    pending.delete(data.request_id);
    clearTimeout(waiting.timer);
    const response = data.response;
    if (response && typeof response === "object" && response.error) {
      waiting.reject(new Error(response.error.message || "Element refused the request."));
    } else {
      waiting.resolve(response);
    }
  });

  // Element waits up to 20 s for a widget's state echo, so set_widget waits longer.
  const ask = (action, fields, timeoutMs = 10000) => new Promise((resolve, reject) => {
    if (window.parent === window) {
      reject(new Error("Open this page from your Matrix client."));
      return;
    }
    const id = "hearth-" + Date.now().toString(36) + "-" + (++sequence);
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(new Error("Your client did not answer (" + action + ") within " + timeoutMs / 1000 + " seconds."));
    }, timeoutMs);
    pending.set(id, { action, resolve, reject, timer });
    window.parent.postMessage(Object.assign({ action, request_id: id }, fields), parentOrigin);
  });

  $("#close").addEventListener("click", () => {
    say("Closing…", "busy");
    ask("close_scalar", {}).catch((e) => say(e.message, "bad"));
  });

  if (view === "terms") {
    const accept = $("#accept");
    accept.addEventListener("click", async () => {
      accept.disabled = true;
      say("Accepting the terms…", "busy");
      try {
        const res = await fetch("/_matrix/integrations/v1/terms", {
          method: "POST",
          headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
          body: JSON.stringify({ user_accepts: config.terms_urls }),
        });
        if (!res.ok) throw new Error("The server refused (" + res.status + ").");
        say("Terms accepted. Loading…", "ok");
        location.reload();
      } catch (e) {
        accept.disabled = false;
        say("Could not accept the terms: " + e.message, "bad");
      }
    });
    return;
  }
  if (view !== "manager") return;

  // Widget ids and Jitsi conference names as Element makes them
  // (matrix-js-sdk randomString and addJitsiWidget).
  const pick = (alphabet, n) => {
    const bytes = crypto.getRandomValues(new Uint8Array(n));
    return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
  };
  const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  const LOWER = "abcdefghijklmnopqrstuvwxyz";
  const newWidgetId = () => pick(UPPER + LOWER + "0123456789", 24);
  const newConferenceId = () => "Jitsi" + pick(UPPER, 1) + pick(LOWER, 23);

  const KINDS = {
    jitsi: "jitsi", "m.jitsi": "jitsi", etherpad: "etherpad", "m.etherpad": "etherpad",
    grafana: "dashboard", "m.grafana": "dashboard", youtube: "video", "m.video": "video",
    "m.custom": "custom", customwidget: "custom",
  };
  const LABELS = { jitsi: "Jitsi conference", etherpad: "Etherpad", dashboard: "Dashboard", video: "Video", custom: "Web page" };
  const wrapper = (page, target) => config.widgets_base + "/" + page + "?url=" + encodeURIComponent(target);
  const isHttps = (v) => { try { return new URL(v).protocol === "https:"; } catch (_) { return false; } };

  // Element's Jitsi widget URL (WidgetUtils.getLocalJitsiWrapperUrl), on our wrapper.
  const jitsiUrl = (conferenceId) => config.widgets_base + "/jitsi?confId=" + conferenceId +
    "#conferenceDomain=$domain&conferenceId=$conferenceId&isAudioOnly=$isAudioOnly" +
    "&isVideoChannel=$isVideoChannel&displayName=$matrix_display_name&avatarUrl=$matrix_avatar_url" +
    "&userId=$matrix_user_id&roomId=$matrix_room_id&theme=$theme&roomName=$roomName" +
    "&supportsScreensharing=true&language=$org.matrix.msc2873.client_language";

  // The set_widget request for an editor's form; `old` is the widget being edited.
  const buildWidget = (kind, form, old) => {
    const name = form.elements.name.value.trim();
    if (!name) throw new Error("Give the widget a name.");
    const id = old ? old.state_key : newWidgetId();
    const oldData = (old && old.content.data) || {};
    if (kind === "jitsi") {
      const conferenceId = oldData.conferenceId || newConferenceId();
      return {
        widget_id: id, type: "jitsi", name,
        url: old ? old.content.url : jitsiUrl(conferenceId),
        data: {
          conferenceId,
          roomName: oldData.roomName || roomName,
          isAudioOnly: form.elements.audio.checked,
          isVideoChannel: false,
          domain: oldData.domain || config.jitsi_domain,
        },
      };
    }
    if (kind === "etherpad") {
      const pad = form.elements.pad.value.trim();
      if (!/^[A-Za-z0-9_-]+$/.test(pad)) throw new Error("A pad name holds only letters, digits, - and _.");
      const padUrl = config.etherpad_url + pad;
      return { widget_id: id, type: "etherpad", name, url: wrapper("generic", padUrl), data: { url: padUrl } };
    }
    const target = form.elements.url.value.trim();
    if (!isHttps(target)) throw new Error("Give an address starting with https://");
    if (kind === "video") return { widget_id: id, type: "youtube", name, url: wrapper("video", target), data: { url: target } };
    if (kind === "dashboard") return { widget_id: id, type: "grafana", name, url: wrapper("generic", target), data: { url: target } };
    return { widget_id: id, type: "m.custom", name, url: wrapper("generic", target), data: { url: target, title: name } };
  };

  let widgets = [];
  let canEdit = false;
  let editing = null;
  const list = $("#widgets");

  const closeEditors = () => {
    $$(".editor").forEach((f) => { f.hidden = true; });
    $$(".card").forEach((c) => c.setAttribute("aria-expanded", "false"));
    editing = null;
  };

  const openEditor = (kind, old) => {
    const form = $("#ed-" + kind);
    if (!form) { say("This server does not offer " + (LABELS[kind] || kind) + " widgets.", "bad"); return; }
    closeEditors();
    form.reset();
    editing = old || null;
    $(".verb", form).textContent = old ? "Edit" : "Add";
    $("button[type=submit]", form).textContent = old ? "Save" : "Add to room";
    if (old) {
      const c = old.content, d = c.data || {};
      form.elements.name.value = c.name || "";
      if (form.elements.audio) form.elements.audio.checked = d.isAudioOnly === true;
      if (form.elements.pad && d.url && config.etherpad_url) form.elements.pad.value = d.url.slice(config.etherpad_url.length);
      // Widgets made elsewhere (Element's /addwidget) may keep the page only in `url`.
      if (form.elements.url) form.elements.url.value = d.url || c.url || "";
    }
    form.hidden = false;
    const card = $(".card[data-kind=" + kind + "]");
    if (card) card.setAttribute("aria-expanded", "true");
    form.elements.name.focus();
  };

  const renderWidgets = () => {
    list.textContent = "";
    list.setAttribute("aria-busy", "false");
    if (!widgets.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No widgets yet.";
      list.appendChild(li);
      return;
    }
    for (const w of widgets) {
      const kind = KINDS[w.content.type] || "custom";
      const li = document.createElement("li");
      const text = document.createElement("div");
      text.className = "grow";
      const b = document.createElement("b");
      b.textContent = w.content.name || w.content.type;
      const small = document.createElement("small");
      small.textContent = " " + (LABELS[kind] || w.content.type);
      text.append(b, small);
      const edit = document.createElement("button");
      edit.type = "button";
      edit.textContent = "Edit";
      edit.setAttribute("aria-label", "Edit " + b.textContent);
      edit.disabled = !canEdit || !$("#ed-" + kind);
      edit.addEventListener("click", () => openEditor(kind, w));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove " + b.textContent);
      remove.disabled = !canEdit;
      remove.addEventListener("click", () => removeWidget(w, remove));
      li.append(text, edit, remove);
      list.appendChild(li);
    }
  };

  const loadWidgets = async () => {
    list.setAttribute("aria-busy", "true");
    const events = await ask("get_widgets", { room_id: roomId });
    // Room widgets only; the user's own (sticker picker) are not this room's.
    widgets = (Array.isArray(events) ? events : []).filter((e) =>
      e && e.type === "im.vector.modular.widgets" && e.content && e.content.type && e.content.url);
    renderWidgets();
  };

  const removeWidget = async (w, button) => {
    const name = w.content.name || w.state_key;
    button.disabled = true;
    say("Removing " + name + "…", "busy");
    try {
      await ask("set_widget", { room_id: roomId, widget_id: w.state_key, type: w.content.type, url: null }, 25000);
      say("Removed " + name + ".", "ok");
      await loadWidgets();
    } catch (e) {
      button.disabled = false;
      say("Could not remove " + name + ": " + e.message, "bad");
    }
  };

  $$(".card").forEach((card) => card.addEventListener("click", () => {
    if (card.getAttribute("aria-expanded") === "true") { closeEditors(); card.focus(); } else openEditor(card.dataset.kind);
  }));
  $$(".editor").forEach((form) => {
    const cancel = () => {
      closeEditors();
      say("");
      const card = $(".card[data-kind=" + form.dataset.kind + "]");
      if (card) card.focus();
    };
    $(".cancel", form).addEventListener("click", cancel);
    form.addEventListener("keydown", (event) => { if (event.key === "Escape") cancel(); });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const kind = form.dataset.kind;
      const old = editing;
      let widget;
      try { widget = buildWidget(kind, form, old); } catch (e) { say(e.message, "bad"); return; }
      const submit = $("button[type=submit]", form);
      submit.disabled = true;
      say((old ? "Saving " : "Adding ") + widget.name + "…", "busy");
      try {
        await ask("set_widget", Object.assign({ room_id: roomId }, widget), 25000);
        closeEditors();
        say((old ? "Saved " : "Added ") + widget.name + ".", "ok");
        await loadWidgets();
      } catch (e) {
        say("Could not save " + widget.name + ": " + e.message, "bad");
      } finally {
        submit.disabled = false;
      }
    });
    const url = form.elements.url;
    if (url && form.dataset.kind === "custom") {
      url.addEventListener("change", () => lookUpTitle(form));
    }
  });

  // Fills an empty name from the page's title (the server fetches it).
  const lookUpTitle = async (form) => {
    const target = form.elements.url.value.trim();
    const hint = $(".hint", form);
    if (!isHttps(target)) return;
    hint.textContent = "Looking up the page title…";
    try {
      const q = new URLSearchParams({ scalar_token: token, curl: target });
      const res = await fetch("/api/widgets/title_lookup?" + q, { headers: { "Accept": "application/json" } });
      const body = await res.json();
      const title = body && body.page_title_cache_item && body.page_title_cache_item.cached_title;
      if (!res.ok) throw new Error(body.error || res.status);
      hint.textContent = title ? "Page title: " + title : "The page has no title.";
      if (title && !form.elements.name.value.trim()) form.elements.name.value = title;
    } catch (e) {
      hint.textContent = "No title found (" + e.message + ").";
    }
  };

  const botState = async (li) => {
    const label = $(".state", li);
    const button = $(".bot-action", li);
    button.disabled = true;
    label.textContent = "Checking…";
    try {
      const member = await ask("membership_state", { room_id: roomId, user_id: li.dataset.user });
      const membership = member && member.membership;
      const inRoom = membership === "join" || membership === "invite";
      label.textContent = membership === "join" ? "In this room" : membership === "invite" ? "Invited" : "Not in this room";
      button.textContent = inRoom ? "Remove" : "Add";
      button.dataset.action = inRoom ? "kick" : "invite";
      button.setAttribute("aria-label", (inRoom ? "Remove " : "Add ") + li.dataset.name);
      button.disabled = false;
    } catch (e) {
      label.textContent = "Unknown: " + e.message;
    }
  };

  $$(".bot").forEach((li) => $(".bot-action", li).addEventListener("click", async (event) => {
    const button = event.currentTarget;
    const action = button.dataset.action;
    const name = li.dataset.name;
    button.disabled = true;
    say((action === "invite" ? "Inviting " : "Removing ") + name + "…", "busy");
    try {
      const fields = { room_id: roomId, user_id: li.dataset.user };
      if (action === "kick") fields.reason = "Removed with the integration manager";
      await ask(action, fields, 15000);
      say((action === "invite" ? "Invited " : "Removed ") + name + ".", "ok");
    } catch (e) {
      say("Could not " + (action === "invite" ? "invite " : "remove ") + name + ": " + e.message, "bad");
    }
    await botState(li);
  }));

  const start = async () => {
    if (!roomId) {
      list.setAttribute("aria-busy", "false");
      list.textContent = "";
      say("Open the integration manager from a room to manage its widgets and bots.", "bad");
      $$(".card, .bot-action").forEach((b) => { b.disabled = true; });
      return;
    }
    say("Checking your permissions…", "busy");
    try {
      await ask("can_send_event", { room_id: roomId, event_type: "im.vector.modular.widgets", is_state: true });
      canEdit = true;
    } catch (e) {
      const power = $("#power");
      power.textContent = "You cannot add, change or remove widgets here: " + e.message +
        " Ask a room admin to raise your power level, or to add the widget for you.";
      power.hidden = false;
      $$(".card, .editor button[type=submit]").forEach((b) => { b.disabled = true; });
    }
    try {
      await loadWidgets();
      say("");
    } catch (e) {
      list.setAttribute("aria-busy", "false");
      say("Could not list the room's widgets: " + e.message, "bad");
    }
    const target = integId && widgets.find((w) => w.state_key === integId);
    if (target && canEdit) openEditor(KINDS[target.content.type] || "custom", target);
    else { const open = $(".editor:not([hidden])"); if (open) open.elements.name.focus(); }
    for (const li of $$(".bot")) await botState(li);
  };
  start();
})();
