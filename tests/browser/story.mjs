// The console's story in a real browser, as a new user lives it: sign in with the printed
// token, New destination, search and pick an event, paste the receiver's URL, Test webhook,
// Create, watch a delivery arrive, see one fail and redeliver it, read the charts; then what
// must not happen (another tenant's pages, a forged form, markup from a tenant run as code).
// Driven by `tests/it/browser.rs`, which starts the server and the receiver and answers
// each `STEP` line this script prints (publish an event, take the receiver down, ...).
// Every page is photographed at 1280 and 390 px.

import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import assert from "node:assert/strict";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const base = process.env.HERALD_URL.replace(/\/$/, "");
const adminToken = process.env.HERALD_ADMIN_TOKEN;
const tenantToken = process.env.HERALD_TENANT_TOKEN;
const receiverUrl = process.env.RECEIVER_URL;
const shots = process.env.SCREENSHOTS;

// One request to the test harness, one answer back.
const lines = createInterface({ input: process.stdin });
const answers = lines[Symbol.asyncIterator]();
async function step(request) {
  process.stdout.write(`STEP ${JSON.stringify(request)}\n`);
  const { value, done } = await answers.next();
  assert.ok(!done, "the harness answers every step");
  const answer = JSON.parse(value);
  assert.equal(answer.ok, true, JSON.stringify(answer));
  return answer;
}

function say(what) {
  process.stdout.write(`story: ${what}\n`);
}

// A page at both widths, full length, then back to the desktop width.
async function shoot(page, name) {
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    await page.screenshot({ path: path.join(shots, `${name}-${width}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

// Reloads until `check` holds: the server works in the background, the page shows it after.
async function reloadUntil(page, what, check) {
  for (let i = 0; i < 50; i++) {
    if (await check()) return;
    await page.waitForTimeout(200);
    await page.reload();
  }
  throw new Error(`the page never showed ${what}`);
}

async function signIn(page, token) {
  await page.goto(`${base}/`);
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/streams$/);
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM });
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
const problems = [];
// What no page may do: fail a script, break the Content-Security-Policy (reported on the
// console), miss a resource, or let injected markup open a dialog.
// A page that is meant to be refused reports its own 403 or 404 on the console too.
function watch(page, refusalsExpected = false) {
  page.on("pageerror", (error) => problems.push(`script error: ${error.message}`));
  page.on("console", (message) => {
    const refusal = /Failed to load resource: .* status of 40[34]/.test(message.text());
    if (message.type() === "error" && !(refusalsExpected && refusal)) {
      problems.push(`console: ${message.text()}`);
    }
  });
  page.on("dialog", (dialog) => {
    problems.push(`a script opened a ${dialog.type()}: ${dialog.message()}`);
    dialog.dismiss();
  });
}
watch(page);
try {

  // Sign in.
  await page.goto(`${base}/`);
  await shoot(page, "01-sign-in");
  await signIn(page, adminToken);
  say("signed in");
  await shoot(page, "02-streams-empty");

  // New destination, as a dialog over the list.
  await page.getByRole("link", { name: "New destination" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  await dialog.getByLabel("Name", { exact: true }).fill("Audit log to our receiver");
  await dialog.getByLabel("Search events").fill("user.cre");
  // Enter in the search box searches; it sends nothing (checked by the count below).
  await dialog.getByLabel("Search events").press("Enter");
  assert.equal(await dialog.getByLabel("user.deleted", { exact: true }).isVisible(), false);
  await dialog.getByLabel("user.created", { exact: true }).check();
  await dialog.getByLabel("Search events").fill("");
  await dialog.getByLabel("Webhook URL").fill(receiverUrl);
  await shoot(page, "03-new-destination");

  // Test webhook: the receiver's answer, before anything is saved.
  await dialog.getByRole("button", { name: "Test webhook" }).click();
  await dialog.locator("#test-status").waitFor();
  assert.equal((await dialog.locator("#test-status").textContent()).trim(), "HTTP 200");
  assert.equal((await dialog.locator("#test-body").textContent()).trim(), "ok");
  assert.equal(await dialog.getByLabel("Webhook URL").inputValue(), receiverUrl);
  assert.equal(await dialog.getByLabel("user.created", { exact: true }).isChecked(), true);
  assert.equal((await step({ do: "received" })).count, 1);
  say("tested the webhook");
  await shoot(page, "04-test-webhook");

  // Escape closes the dialog; the list is still there underneath.
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden" });

  // The same form as its own page, filled again, and Create.
  await page.goto(`${base}/tenants/ten_default/streams/new`);
  await page.getByLabel("Name", { exact: true }).fill("Audit log to our receiver");
  await page.getByLabel("user.created", { exact: true }).check();
  await page.getByLabel("Webhook URL").fill(receiverUrl);
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForURL(/\/streams\/est_[A-Za-z0-9]+$/);
  const streamUrl = page.url();
  say("created the stream");

  // An event published through the API is delivered, and the page shows it.
  await step({ do: "publish", event: { type: "user.created", data: { user_id: "u_1", email: "a@example.com" } } });
  await reloadUntil(page, "a succeeded delivery", async () =>
    (await page.locator("table.deliveries .badge.succeeded").count()) > 0
  );
  await shoot(page, "05-stream");
  say("saw the delivery");

  // The receiver goes down: the next delivery fails, and its attempt drawer says how.
  await step({ do: "receiver_fails" });
  await step({ do: "publish", event: { type: "user.created", data: { user_id: "u_2", email: "c@example.com" } } });
  await page.getByRole("link", { name: "All deliveries, with filters and redelivery" }).click();
  await page.getByRole("heading", { name: "Deliveries", exact: true }).waitFor();
  await reloadUntil(page, "a failed attempt", async () =>
    (await page.locator("tr", { hasText: "HTTP 503" }).count()) > 0
  );
  await shoot(page, "06-deliveries");
  await page.locator("tr", { hasText: "HTTP 503" }).locator("a").first().click();
  await page.getByRole("heading", { name: "Attempts" }).waitFor();
  const drawer = page.locator("details.attempt[open]");
  const attempt = await drawer.innerText();
  assert.ok(attempt.includes("HTTP 503"), attempt);
  assert.ok(attempt.includes("down for maintenance"), attempt);
  assert.ok(attempt.includes("webhook-signature"), attempt);
  await shoot(page, "07-delivery-failed");
  say("saw the failed attempt");

  // The receiver is fixed; redelivering sends it again, and it succeeds.
  await step({ do: "receiver_recovers" });
  await page.getByRole("button", { name: "Redeliver" }).click();
  await reloadUntil(page, "the redelivery succeeding", async () =>
    (await page.locator("h1 .badge.succeeded").count()) > 0
  );
  assert.equal(await page.locator("details.attempt").count(), 2);
  await shoot(page, "08-delivery-redelivered");
  say("redelivered");

  // A delivery whose data carries markup shows it as text.
  await step({
    do: "publish",
    event: { type: "user.created", data: { user_id: "<img src=x onerror=alert(1)>", email: "b@example.com" } },
  });

  await page.goto(`${base}/tenants/ten_default/streams`);
  await shoot(page, "09-streams");

  // The stream's charts, over 24 hours and over 7 days.
  await page.goto(streamUrl);
  const charts = page.getByRole("region", { name: "Deliveries per hour" });
  await charts.waitFor();
  assert.ok((await charts.locator("svg[role=img]").count()) >= 2, "a success chart and a latency chart");
  await charts.getByLabel("Range").selectOption({ label: "Last 7 days" });
  await charts.getByRole("button", { name: "Show" }).click();
  await page.waitForURL(/range=7d/);
  await shoot(page, "10-stream-charts");
  say("read the charts");

  // The event log shows the event whose data carries markup, as text.
  await page.goto(`${base}/tenants/ten_default/events`);
  await page.getByRole("heading", { name: "Event log" }).waitFor();
  await shoot(page, "11-event-log");
  await page.locator("table.events a").first().click();
  await page.getByRole("heading", { name: "Data" }).waitFor();
  assert.ok(
    (await page.locator("body").innerText()).includes("<img src=x onerror=alert(1)>"),
    "the markup is shown as text"
  );
  assert.equal(await page.locator("main img").count(), 0, "and never becomes an element");
  await shoot(page, "12-event");

  // Event types, tenants, tokens: a new token's secret is shown once.
  await page.goto(`${base}/tenants/ten_default/event-types`);
  await page.getByRole("heading", { name: "Event types" }).waitFor();
  await shoot(page, "13-event-types");
  await page.goto(`${base}/tenants`);
  await shoot(page, "14-tenants");
  await page.goto(`${base}/tenants/ten_default/tokens`);
  await page.getByLabel("Name", { exact: true }).fill("CI publisher");
  await page.getByLabel("publish:events", { exact: true }).check();
  await page.getByRole("button", { name: "Create token" }).click();
  await page.getByRole("heading", { name: "Token created" }).waitFor();
  assert.match(await page.getByLabel("Token", { exact: true }).inputValue(), /^hrd_/);
  await shoot(page, "15-token-created");
  await page.goto(`${base}/tenants/ten_default/tokens`);
  await shoot(page, "16-tokens");
  say("visited the admin pages");

  // What must not happen: another tenant's pages, the tenants page, a forged form.
  const other = await browser.newContext();
  const tenantPage = await other.newPage();
  watch(tenantPage, true);
  await signIn(tenantPage, tenantToken);
  assert.match(tenantPage.url(), /\/tenants\/ten_acme\/streams$/);
  const foreign = await tenantPage.goto(streamUrl);
  assert.equal(foreign.status(), 404);
  const foreignList = await tenantPage.goto(`${base}/tenants/ten_default/streams`);
  assert.equal(foreignList.status(), 404);
  // The tenants page is a platform admin's: refused, whatever the token's scopes.
  const tenants = await tenantPage.goto(`${base}/tenants`);
  assert.ok([403, 404].includes(tenants.status()), `the tenants page answered ${tenants.status()}`);
  const forged = await tenantPage.request.post(`${base}/tenants/ten_acme/streams/new`, {
    form: { name: "forged", webhook_url: receiverUrl, event: "user.created", intent: "create" },
  });
  assert.equal(forged.status(), 403);
  await other.close();
  say("refused what must be refused");

  assert.deepEqual(problems, []);
  say("done");
} catch (error) {
  // What the page looked like when the story broke, for whoever reads the failure.
  await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
  say(`failed at ${page.url()}: ${(await page.locator("body").innerText().catch(() => "")).slice(0, 3000)}`);
  throw error;
} finally {
  await browser.close();
  // Stop reading the harness's answers, so that Node can exit.
  lines.close();
  process.stdin.destroy();
}
