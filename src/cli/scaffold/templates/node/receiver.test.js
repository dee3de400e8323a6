// The receiver's own tests: deliveries signed with the real Standard Webhooks library, built
// from the event catalog's samples (samples.json), sent over HTTP to the receiver on a free port.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { Webhook } = require("standardwebhooks");
const { createReceiver } = require("../receiver");
const handlers = require("../handlers");
const samples = require("../samples.json");

const SECRET = `whsec_${Buffer.from("the receiver's test secret, 32 b").toString("base64")}`;
const OTHER_SECRET = `whsec_${Buffer.from("not the receiver's secret, 32 by").toString("base64")}`;
const quiet = { error() {} };

// The receiver on a free port, with each handler wrapped to record that it ran.
async function start(t) {
  const calls = [];
  const counted = {};
  for (const [type, handler] of Object.entries(handlers)) {
    counted[type] = async (event) => {
      calls.push(type);
      return handler(event);
    };
  }
  const server = createReceiver({ secret: SECRET, handlers: counted, log: quiet });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  return { url: `http://127.0.0.1:${server.address().port}/`, calls };
}

// A CloudEvent as Herald sends it, with the catalog's sample `data` unless given.
function cloudEvent(type, data = samples[type]) {
  return JSON.stringify({
    specversion: "1.0",
    id: `evt_${crypto.randomUUID()}`,
    source: "https://example.com/platform",
    type,
    time: new Date().toISOString(),
    datacontenttype: "application/json",
    data,
  });
}

// POSTs `body` signed with `secret` (the body sent may differ from the one signed).
async function deliver(url, signedBody, { id = `dlv_${crypto.randomUUID()}`, secret = SECRET, sentBody = signedBody } = {}) {
  const signature = new Webhook(secret).sign(id, new Date(), signedBody);
  const response = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/cloudevents+json",
      "webhook-id": id,
      "webhook-timestamp": String(Math.floor(Date.now() / 1000)),
      "webhook-signature": signature,
    },
    body: sentBody,
  });
  return { status: response.status, body: await response.json() };
}

const firstType = Object.keys(samples)[0];

test("a delivery with a valid signature is handled", async (t) => {
  const { url, calls } = await start(t);
  const { status, body } = await deliver(url, cloudEvent(firstType));
  assert.equal(status, 200);
  assert.equal(body.status, "handled");
  assert.deepEqual(calls, [firstType]);
});

test("a tampered body is refused with 401 and not handled", async (t) => {
  const { url, calls } = await start(t);
  const signed = cloudEvent(firstType);
  const tampered = signed.replace(`"type":"${firstType}"`, `"type":"${firstType}","tampered":true`);
  assert.notEqual(tampered, signed);
  const { status } = await deliver(url, signed, { sentBody: tampered });
  assert.equal(status, 401);
  assert.deepEqual(calls, []);
});

test("a delivery signed with another secret is refused with 401", async (t) => {
  const { url, calls } = await start(t);
  const { status } = await deliver(url, cloudEvent(firstType), { secret: OTHER_SECRET });
  assert.equal(status, 401);
  assert.deepEqual(calls, []);
});

test("a delivery without signature headers is refused with 400", async (t) => {
  const { url, calls } = await start(t);
  const response = await fetch(url, { method: "POST", body: cloudEvent(firstType) });
  assert.equal(response.status, 400);
  assert.deepEqual(calls, []);
});

test("a repeated webhook-id is answered 2xx without running the handler again", async (t) => {
  const { url, calls } = await start(t);
  const body = cloudEvent(firstType);
  const first = await deliver(url, body, { id: "dlv_repeated" });
  const again = await deliver(url, body, { id: "dlv_repeated" });
  assert.equal(first.status, 200);
  assert.equal(again.status, 200);
  assert.equal(again.body.status, "duplicate");
  assert.deepEqual(calls, [firstType]);
});

for (const type of Object.keys(samples)) {
  test(`${type} reaches its handler`, async (t) => {
    const { url, calls } = await start(t);
    const { status, body } = await deliver(url, cloudEvent(type));
    assert.equal(status, 200);
    assert.equal(body.status, "handled");
    assert.equal(body.type, type);
    assert.deepEqual(calls, [type]);
  });
}

test("the audit payload format reaches the handler too", async (t) => {
  const { url, calls } = await start(t);
  const audit = JSON.stringify({ id: "evt_audit", action: firstType, data: samples[firstType] });
  const { status, body } = await deliver(url, audit);
  assert.equal(status, 200);
  assert.equal(body.status, "handled");
  assert.deepEqual(calls, [firstType]);
});
{{failed_run_test}}
