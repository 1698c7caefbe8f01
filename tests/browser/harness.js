"use strict";
// Plays Element's side of the integration manager protocol for the browser
// test, as matrix-react-sdk does it: ScalarAuthClient's register and
// account calls, then ScalarMessaging's postMessage listener (origin of
// the UI URL only, `action` set and no `api`; the request echoed back with
// `response` added, to event.source at event.origin; room actions only for
// the room on screen), applying changes through Synapse's client API.
(() => {
  const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  const uiOrigin = new URL(cfg.ui).origin;
  const enc = encodeURIComponent;
  const log = [];
  const writes = [];
  window.harness = { log, writes, closed: false, accountBefore: null, error: null };
  const status = (text) => { document.getElementById("harness-status").textContent = text; };

  async function cs(method, path, body) {
    const headers = { Authorization: "Bearer " + cfg.access_token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(cfg.synapse + path, { method, headers, body });
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
    if (!res.ok) {
      const error = new Error((json && json.error) || String(res.status));
      error.status = res.status;
      throw error;
    }
    return json;
  }
  const room = (path) => "/_matrix/client/v3/rooms/" + enc(cfg.room_id) + path;
  async function stateEvent(type, key) {
    try { return await cs("GET", room("/state/" + enc(type) + "/" + enc(key))); } catch (e) {
      if (e.status === 404) return null;
      throw e;
    }
  }

  // objectClone (JSON round trip), then `response` added.
  function respond(event, response) {
    const data = JSON.parse(JSON.stringify(event.data));
    data.response = response;
    event.source.postMessage(data, event.origin);
    log.push(data);
  }
  const fail = (event, message) => respond(event, { error: { message } });

  // WidgetType.fromString(...).legacy for the types Element knows.
  const KNOWN = [["m.jitsi", "jitsi"], ["m.stickerpicker", "m.stickerpicker"],
    ["m.integration_manager", "m.integration_manager"], ["m.custom", "m.custom"], ["m.call", "m.call"]];
  const legacy = (t) => { for (const [p, l] of KNOWN) if (t === p || t === l) return l; return t; };

  async function getWidgets(event, roomId) {
    let events = [];
    if (roomId) {
      const all = await cs("GET", room("/state"));
      events = all.filter((e) => e.type === "im.vector.modular.widgets" && e.content.type && e.content.url);
    }
    let user = {};
    try { user = await cs("GET", "/_matrix/client/v3/user/" + enc(cfg.user_id) + "/account_data/m.widgets"); } catch (_) { user = {}; }
    respond(event, events.concat(Object.values(user)));
  }

  async function setWidget(event, roomId) {
    const d = event.data;
    if (!d.widget_id || d.url === undefined) return fail(event, "Unable to create widget.");
    if (d.url !== null) {
      if (d.name !== undefined && typeof d.name !== "string") return fail(event, "Unable to create widget.");
      if (d.data !== undefined && !(d.data instanceof Object)) return fail(event, "Unable to create widget.");
      if (d.avatar_url !== undefined && typeof d.avatar_url !== "string") return fail(event, "Unable to create widget.");
      if (typeof d.type !== "string" || typeof d.url !== "string") return fail(event, "Unable to create widget.");
    }
    if (!roomId) return fail(event, "Missing roomId.");
    // WidgetUtils.setRoomWidget: this content, in this key order.
    const content = d.url ? { type: legacy(d.type), url: d.url, name: d.name, data: d.data, avatar_url: d.avatar_url } : {};
    const body = JSON.stringify(content);
    writes.push({ widget_id: d.widget_id, body });
    await cs("PUT", room("/state/im.vector.modular.widgets/" + enc(d.widget_id)), body);
    respond(event, { success: true });
  }

  async function canSendEvent(event) {
    const me = await stateEvent("m.room.member", cfg.user_id);
    if (!me || me.membership !== "join") return fail(event, "You are not in this room.");
    const pl = (await stateEvent("m.room.power_levels", "")) || {};
    // Room version 12 (MSC4289): creators outrank every power level and
    // are not listed in `users`.
    const create = await cs("GET", room("/state/m.room.create/?format=event"));
    const creators = [create.sender].concat(create.content.additional_creators || []);
    const mine = create.content.room_version === "12" && creators.includes(cfg.user_id)
      ? Infinity
      : (pl.users && pl.users[cfg.user_id]) ?? pl.users_default ?? 0;
    const type = "" + event.data.event_type;
    const needed = (pl.events && pl.events[type]) ??
      (event.data.is_state ? (pl.state_default ?? 50) : (pl.events_default ?? 0));
    if (mine < needed) return fail(event, "You do not have permission to do that in this room.");
    respond(event, true);
  }

  async function invite(event) {
    const member = await stateEvent("m.room.member", event.data.user_id);
    if (member && ["join", "invite"].includes(member.membership)) return respond(event, { success: true });
    try { await cs("POST", room("/invite"), JSON.stringify({ user_id: event.data.user_id })); } catch (e) {
      return fail(event, "You need to be able to invite users to do that.");
    }
    respond(event, { success: true });
  }

  async function kick(event) {
    const member = await stateEvent("m.room.member", event.data.user_id);
    if (!member || ["leave", "ban"].includes(member.membership)) return respond(event, { success: true });
    try {
      await cs("POST", room("/kick"), JSON.stringify({ user_id: event.data.user_id, reason: event.data.reason }));
    } catch (e) {
      return fail(event, "You need to be able to kick users to do that.");
    }
    respond(event, { success: true });
  }

  window.addEventListener("message", async (event) => {
    if (event.origin !== uiOrigin) return;
    const d = event.data;
    if (!d || !d.action || d.api) return;
    // A client that never answers some actions, to see the UI time out.
    if ((cfg.silent || []).includes(d.action)) return;
    try {
      if (d.action === "close_scalar") {
        respond(event, null);
        window.harness.closed = true;
        document.getElementById("im").remove();
        return;
      }
      if (!d.room_id) {
        if (d.action === "get_widgets") return await getWidgets(event, null);
        if (d.action === "set_widget") return await setWidget(event, null);
        return fail(event, "Missing room_id in request");
      }
      if (d.room_id !== cfg.room_id) return fail(event, "Room " + d.room_id + " not visible");
      if (d.action === "get_widgets") return await getWidgets(event, d.room_id);
      if (d.action === "set_widget") return await setWidget(event, d.room_id);
      if (d.action === "can_send_event") return await canSendEvent(event);
      if (!d.user_id) return fail(event, "Missing user_id in request");
      if (d.action === "membership_state") return respond(event, await stateEvent("m.room.member", d.user_id));
      if (d.action === "invite") return await invite(event);
      if (d.action === "kick") return await kick(event);
    } catch (e) {
      fail(event, "Failed to send request.");
    }
  });

  // ScalarAuthClient.registerForToken, then getAccountName; the UI opens
  // with the token even before the terms are accepted, so that the
  // UI's own terms flow is what accepts them.
  (async () => {
    try {
      status("getting an OpenID token");
      const openid = await cs("POST", "/_matrix/client/v3/user/" + enc(cfg.user_id) + "/openid/request_token", "{}");
      const reg = await fetch(cfg.rest + "/register?v=1.1", {
        method: "POST", body: JSON.stringify(openid), headers: { "Content-Type": "application/json" },
      });
      if (!reg.ok) throw new Error("register answered " + reg.status);
      const token = (await reg.json()).scalar_token;
      const account = new URL(cfg.rest + "/account");
      account.searchParams.set("scalar_token", token);
      account.searchParams.set("v", "1.1");
      window.harness.accountBefore = await (await fetch(account)).json();
      // getScalarInterfaceUrlForRoom: plain concatenation.
      let url = cfg.ui + "?scalar_token=" + enc(token);
      url += "&room_id=" + enc(cfg.room_id);
      url += "&room_name=" + enc(cfg.room_name);
      url += "&theme=" + enc(cfg.theme);
      if (cfg.integ_id) url += "&integ_id=" + enc(cfg.integ_id);
      if (cfg.screen) url += "&screen=" + enc(cfg.screen);
      document.getElementById("im").src = url;
      status("opened");
    } catch (e) {
      window.harness.error = String(e);
      status("failed: " + e);
    }
  })();
})();
