// Drives headless Debian Chromium through the integration manager UI, in
// the harness page that plays Element. Talks to the Rust test on stdio:
// after each step it prints `STEP <name> <json>` and waits for a line
// `ok` (the test checks Synapse's state meanwhile), or `stop`.
// Usage: node drive.mjs <settings.json>; playwright-core from NODE_PATH.
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { createInterface } from "node:readline";

const settings = JSON.parse(readFileSync(process.argv[2], "utf8"));
const require = createRequire(join(settings.playwright_dir, "noop.js"));
const { chromium } = require("playwright-core");

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function step(name, data = {}) {
  process.stdout.write("STEP " + name + " " + JSON.stringify(data) + "\n");
  const { value, done } = await lines.next();
  if (done || value.trim() !== "ok") throw new Error("the test stopped after " + name + ": " + value);
}

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const harnessUrl = (user) => settings.harness + "#" + encodeURIComponent(JSON.stringify(user));
let shot = 0;
const screenshot = (page, name) => page.screenshot({ path: join(settings.artifacts, String(++shot).padStart(2, "0") + "-" + name + ".png"), fullPage: true });

async function main() {
  // A fresh profile each run (--user-data-dir), headless.
  const context = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "hearth-chromium-")), {
    executablePath: settings.chromium, headless: true, args: FLAGS, viewport: { width: 820, height: 960 },
  });
  context.setDefaultTimeout(30000);
  try {
    const page = await context.newPage();
    const consoleErrors = [];
    // Script errors and CSP violations anywhere. Statuses are not errors
    // here: the Element stand-in gets its expected 403 (terms) and 404s
    // (state not set yet) like Element does.
    page.on("console", (m) => {
      if (m.type() === "error" && !/^Failed to load resource: the server responded with a status of 40[34]/.test(m.text())) consoleErrors.push(m.text());
    });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    await page.goto(harnessUrl(settings.alice));
    const im = page.frameLocator("#im");
    const status = im.locator("#status");

    // The UI's own terms flow.
    await im.getByRole("button", { name: "Accept and continue" }).waitFor();
    await screenshot(page, "terms");
    const accountBefore = await page.evaluate(() => window.harness.accountBefore);
    await im.getByRole("button", { name: "Accept and continue" }).click();
    await im.locator('body[data-view="manager"]').waitFor();
    await im.locator("#widgets[aria-busy=false]").waitFor();
    await im.locator(".bot .state", { hasText: "Not in this room" }).waitFor();
    await screenshot(page, "manager");
    await step("connected", { accountBefore });

    // Add a Jitsi widget, by keyboard: the card, then the form.
    await im.getByRole("button", { name: /Jitsi conference/ }).focus();
    await page.keyboard.press("Enter");
    await im.getByRole("textbox", { name: "Name" }).first().waitFor();
    // Escape closes the editor and gives the focus back to its card.
    await page.keyboard.press("Escape");
    await im.locator("#ed-jitsi").waitFor({ state: "hidden" });
    await im.locator(".card[data-kind=jitsi]:focus").waitFor();
    await page.keyboard.press("Enter");
    await im.getByRole("textbox", { name: "Name" }).first().waitFor();
    await im.locator("#ed-jitsi").getByRole("button", { name: "Add to room" }).click();
    await status.filter({ hasText: "Added Jitsi." }).waitFor();
    await im.getByRole("button", { name: "Edit Jitsi" }).waitFor();
    await screenshot(page, "jitsi-added");
    let harness = await page.evaluate(() => window.harness);
    const added = harness.log.filter((m) => m.action === "set_widget").at(-1);
    await step("added", { request: added, write: harness.writes.at(-1) });

    // Element's widget menu "Edit": screen=type_<type>, integ_id=<widget id>
    // opens that widget's editor at once.
    const editEntry = await context.newPage();
    await editEntry.goto(harnessUrl({ ...settings.alice, screen: "type_jitsi", integ_id: added.widget_id }));
    const entryForm = editEntry.frameLocator("#im").locator("#ed-jitsi:not([hidden])");
    await entryForm.getByRole("button", { name: "Save" }).waitFor();
    await screenshot(editEntry, "edit-entry");
    await step("edit-entry", {
      heading: await entryForm.locator("h3").textContent(),
      name: await entryForm.getByRole("textbox", { name: "Name" }).inputValue(),
      focused: await editEntry.frameLocator("#im").locator(":focus").getAttribute("name"),
    });
    await editEntry.close();

    // Edit: new name, voice only.
    await im.getByRole("button", { name: "Edit Jitsi" }).click();
    const form = im.locator("#ed-jitsi");
    await form.getByRole("textbox", { name: "Name" }).fill("Team call");
    await form.getByRole("checkbox", { name: /Voice only/ }).check();
    await form.getByRole("button", { name: "Save" }).click();
    await status.filter({ hasText: "Saved Team call." }).waitFor();
    await im.getByRole("button", { name: "Edit Team call" }).waitFor();
    await screenshot(page, "jitsi-edited");
    harness = await page.evaluate(() => window.harness);
    await step("edited", { request: harness.log.filter((m) => m.action === "set_widget").at(-1), write: harness.writes.at(-1) });

    // Remove.
    await im.getByRole("button", { name: "Remove Team call" }).click();
    await status.filter({ hasText: "Removed Team call." }).waitFor();
    await im.locator("#widgets .empty").waitFor();
    await screenshot(page, "jitsi-removed");
    harness = await page.evaluate(() => window.harness);
    await step("removed", { request: harness.log.filter((m) => m.action === "set_widget").at(-1), write: harness.writes.at(-1) });

    // The bot: invite, then kick.
    await im.getByRole("button", { name: "Add Echo" }).click();
    await status.filter({ hasText: "Invited Echo." }).waitFor();
    await im.locator(".bot .state", { hasText: "Invited" }).waitFor();
    await screenshot(page, "bot-invited");
    await step("invited");
    await im.getByRole("button", { name: "Remove Echo" }).click();
    await status.filter({ hasText: "Removed Echo." }).waitFor();
    await im.locator(".bot .state", { hasText: "Not in this room" }).waitFor();
    await screenshot(page, "bot-removed");
    await step("kicked");

    // The rest of the catalog: an Etherpad on the operator's pad server and
    // a video, each through its editor.
    await im.getByRole("button", { name: /Etherpad/ }).click();
    await im.locator("#ed-etherpad").getByRole("textbox", { name: "Pad name" }).fill("team-notes");
    await im.locator("#ed-etherpad").getByRole("button", { name: "Add to room" }).click();
    await status.filter({ hasText: "Added Etherpad." }).waitFor();
    harness = await page.evaluate(() => window.harness);
    const pad = harness.writes.at(-1);
    await im.getByRole("button", { name: /^Video/ }).click();
    await im.locator("#ed-video").getByRole("textbox", { name: "Address" }).fill("https://youtu.be/dQw4w9WgXcQ");
    await im.locator("#ed-video").getByRole("button", { name: "Add to room" }).click();
    await status.filter({ hasText: "Added Video." }).waitFor();
    await im.getByRole("button", { name: "Edit Video" }).waitFor();
    await screenshot(page, "catalog");
    harness = await page.evaluate(() => window.harness);
    await step("catalog", { pad, video: harness.writes.at(-1) });

    // Close: close_scalar, answered with null.
    await im.getByRole("button", { name: "Close" }).click();
    await page.waitForFunction(() => window.harness.closed);
    harness = await page.evaluate(() => window.harness);
    const everyRequest = harness.log.map((m) => ({ action: m.action, request_id: m.request_id, has_api: "api" in m }));
    await step("closed", { close: harness.log.at(-1), requests: everyRequest, consoleErrors });

    // A member without power: the UI explains instead of failing later.
    // Their client never answers membership_state: the UI says so.
    const weak = await context.newPage();
    await weak.goto(harnessUrl({ ...settings.bob, silent: ["membership_state"] }));
    const weakIm = weak.frameLocator("#im");
    await weakIm.getByRole("button", { name: "Accept and continue" }).click();
    const power = weakIm.locator("#power");
    await power.waitFor();
    await screenshot(weak, "no-power");
    const addDisabled = await weakIm.getByRole("button", { name: /Jitsi conference/ }).isDisabled();
    const unanswered = weakIm.locator(".bot .state", { hasText: "did not answer" });
    await unanswered.waitFor();
    await screenshot(weak, "no-answer");
    await step("no-power", { text: await power.textContent(), addDisabled, timeout: await unanswered.textContent() });

    // The wrapper pages as a client renders the widget: Element's template
    // variables filled in. Nothing beyond Hearth is fetched: other hosts
    // are cut off before the network.
    const wrapper = await context.newPage();
    const hearth = new URL(settings.alice.ui).origin;
    await wrapper.route((url) => url.origin !== hearth, (route) => route.abort());
    const conference = "JitsiQabcdefghijklmnopqrstuvw";
    await wrapper.goto(hearth + "/widgets/jitsi?confId=" + conference + "#conferenceDomain=meet.example.org&conferenceId=" +
      conference + "&isAudioOnly=true&displayName=Alice%20A.&avatarUrl=&userId=%40alice%3Ahs&roomId=%21r%3Ahs");
    const jitsiFrame = await wrapper.locator("iframe").getAttribute("src");
    const jitsiTitle = await wrapper.locator("iframe").getAttribute("title");
    await wrapper.goto(hearth + "/widgets/jitsi?confId=Other#conferenceDomain=evil.example&conferenceId=" + conference);
    const otherHost = await wrapper.locator("#problem").textContent();
    await wrapper.goto(hearth + "/widgets/video?url=" + encodeURIComponent("https://youtu.be/dQw4w9WgXcQ"));
    const videoFrame = await wrapper.locator("iframe").getAttribute("src");
    await wrapper.close();
    await step("wrappers", { jitsiFrame, jitsiTitle, otherHost, videoFrame });

    // Dark theme, as Element's `theme` asks.
    const dark = await context.newPage();
    await dark.goto(harnessUrl({ ...settings.alice, theme: "dark" }));
    await dark.frameLocator("#im").locator("html[data-theme=dark] #widgets[aria-busy=false]").waitFor();
    await screenshot(dark, "dark");
    await dark.close();
  } finally {
    await context.close();
  }

  // First load in a fresh browser (empty cache): what the UI transfers.
  const browser = await chromium.launch({ executablePath: settings.chromium, headless: true, args: FLAGS });
  try {
    const page = await (await browser.newContext()).newPage();
    const uiOrigin = new URL(settings.alice.ui).origin;
    const seen = [];
    page.on("requestfinished", async (request) => {
      if (new URL(request.url()).origin !== uiOrigin || request.frame() === page.mainFrame()) return;
      seen.push(request.sizes().then((s) => ({ url: new URL(request.url()).pathname, bytes: s.responseBodySize + s.responseHeadersSize })));
    });
    await page.goto(harnessUrl(settings.alice));
    await page.frameLocator("#im").locator("#widgets[aria-busy=false]").waitFor();
    await page.frameLocator("#im").locator(".bot .state", { hasText: "Not in this room" }).waitFor();
    const firstLoad = await Promise.all(seen);
    await step("measured", { firstLoad });
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (e) => {
  process.stdout.write("ERROR " + JSON.stringify(String(e && e.stack || e)) + "\n");
  process.exit(1);
});
