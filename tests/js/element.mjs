// Element's identity-server calls, made with matrix-js-sdk as Element Web
// makes them, against a real Synapse and Hearth. Run by the end-to-end
// test `element_flows_through_matrix_js_sdk` (tests/tests/identity_synapse.rs),
// which reads the mails and the SMS code a person would read: this script
// asks for them on stdout, one line `HEARTH-E2E {"need": ...}` (the SDK
// logs to stdout too), and reads each answer `{"value": ...}` from stdin.
// Progress goes to stderr; any failed check throws, and the exit status
// says so.

import * as sdk from "matrix-js-sdk";
import readline from "node:readline";

const env = process.env;
const HS = env.HS_URL;
const IS = env.IS_URL;

const answers = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function ask(need, fields = {}) {
  process.stdout.write("HEARTH-E2E " + JSON.stringify({ need, ...fields }) + "\n");
  const { value, done } = await answers.next();
  if (done) throw new Error(`no answer for ${need}`);
  return JSON.parse(value).value;
}

function step(...words) {
  console.error("[element]", ...words);
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

// A logged-in client with an identity server, as Element sets one up.
function client(name) {
  const identity = { token: null };
  const c = sdk.createClient({
    baseUrl: HS,
    idBaseUrl: IS,
    userId: env[`${name}_USER_ID`],
    accessToken: env[`${name}_TOKEN`],
    identityServer: { getAccessToken: async () => identity.token },
  });
  c.identity = identity;
  return c;
}

// Element's IdentityAuthClient: an OpenID token from the homeserver,
// exchanged at /account/register (Element reads `access_token`); then
// /account, and on M_TERMS_NOT_SIGNED the terms flow: getTerms, accept
// every policy, agreeToTerms, and the m.accepted_terms account data.
async function identityAuth(c) {
  const openId = await c.getOpenIdToken();
  const registered = await c.registerWithIdentityServer(openId);
  const token = registered.access_token;
  check(typeof token === "string" && token === registered.token, "register answers token and access_token");
  try {
    await c.getIdentityAccount(token);
    throw new Error("/account answered before the terms were accepted");
  } catch (e) {
    check(e.errcode === "M_TERMS_NOT_SIGNED", `terms are asked for first: ${e}`);
  }
  const terms = await c.getTerms(sdk.SERVICE_TYPES.IS, IS);
  const urls = [];
  for (const policy of Object.values(terms.policies)) {
    for (const [lang, doc] of Object.entries(policy)) {
      if (lang !== "version") urls.push(doc.url);
    }
  }
  check(urls.length > 0, "the identity server has terms");
  await c.agreeToTerms(sdk.SERVICE_TYPES.IS, IS, token, urls);
  await c.setAccountData("m.accepted_terms", { accepted: urls });
  const account = await c.getIdentityAccount(token);
  check(account.user_id === c.getUserId(), "/account names the user");
  c.identity.token = token;
  return token;
}

// Settings → Discovery → email (AddThreepid.bindEmailAddress): requestToken
// (matrix-js-sdk sends send_attempt as a string), the link in the mail
// opened in a browser, then the bind through the homeserver.
async function shareEmail(c, typed, canonical) {
  const secret = c.generateClientSecret();
  const { sid } = await c.requestEmailToken(typed, secret, 1, undefined, c.identity.token);
  const link = await ask("email_link", { address: canonical });
  const page = await fetch(link);
  check(page.ok, `the link validates (${page.status})`);
  await c.bindThreePid({
    sid,
    client_secret: secret,
    id_server: c.getIdentityServerUrl(true),
    id_access_token: c.identity.token,
  });
}

// Settings → Discovery → phone (AddThreepid.bindMsisdn(null, number)):
// `country: null`, the code typed in, submitted to the identity server,
// then the bind through the homeserver.
async function sharePhone(c, number) {
  const secret = c.generateClientSecret();
  const requested = await c.requestMsisdnToken(null, number, secret, 1, undefined, c.identity.token);
  const code = await ask("sms_code");
  const submitted = await c.submitMsisdnToken(requested.sid, secret, code, c.identity.token);
  check(submitted.success === true, "the code validates the number");
  await c.bindThreePid({
    sid: requested.sid,
    client_secret: secret,
    id_server: c.getIdentityServerUrl(true),
    id_access_token: c.identity.token,
  });
  return requested.msisdn;
}

async function lookup(c, pairs) {
  const found = await c.identityHashedLookup(pairs, c.identity.token);
  return Object.fromEntries(found.map((m) => [m.address, m.mxid]));
}

const alice = client("ALICE");
const bob = client("BOB");
const carol = client("CAROL");

step("IdentityAuthClient for alice, bob and carol");
for (const c of [alice, bob, carol]) await identityAuth(c);

step("alice shares an email (typed with capitals and ß) and a phone number");
await shareEmail(alice, env.ALICE_EMAIL, env.ALICE_EMAIL_CANONICAL);
const msisdn = await sharePhone(alice, env.ALICE_PHONE);

// matrix-js-sdk lower-cases before hashing: the address as typed hashes
// `strauß.alice@example.org` (Hearth's lower-cased alias), the same in
// capitals (`STRAUSS.ALICE@...`) hashes the case-folded canonical form.
step("bob looks alice up by the mixed-case address, hashed as Element hashes it");
const typed = env.ALICE_EMAIL;
const typedUpper = typed.toUpperCase();
const found = await lookup(bob, [
  [typed, "email"],
  [typedUpper, "email"],
  [msisdn, "msisdn"],
  ["nobody@example.org", "email"],
]);
check(found[typed] === alice.getUserId(), `email as typed found: ${JSON.stringify(found)}`);
check(found[typedUpper] === alice.getUserId(), `email in capitals found: ${JSON.stringify(found)}`);
check(found[msisdn] === alice.getUserId(), `phone found: ${JSON.stringify(found)}`);
check(!("nobody@example.org" in found), "an unbound address is not found");

step("bob invites an address by email; carol joins with the mailed signurl");
const { room_id: roomId } = await bob.createRoom({ name: "Element Room", preset: "private_chat" });
await bob.inviteByEmail(roomId, env.INVITEE_EMAIL);
const signUrl = await ask("signurl", { address: env.INVITEE_EMAIL });
await carol.joinRoom(roomId, { inviteSignUrl: signUrl });
const joined = await carol.getJoinedRooms();
check(joined.joined_rooms.includes(roomId), "carol is in the room");

step("alice stops sharing her email");
const unbound = await alice.unbindThreePid("email", env.ALICE_EMAIL_CANONICAL);
check(unbound.id_server_unbind_result === "success", `unbind: ${JSON.stringify(unbound)}`);
const after = await lookup(bob, [[typed, "email"], [typedUpper, "email"]]);
check(Object.keys(after).length === 0, `the unbound address is not found: ${JSON.stringify(after)}`);

process.stdout.write("HEARTH-E2E " + JSON.stringify({ done: roomId }) + "\n");
process.exit(0);
