"""The receiver's own tests: deliveries signed with the real Standard Webhooks library, built
from the event catalog's samples (samples.json), sent over HTTP to the receiver on a free port."""

import base64
import json
import threading
import unittest
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

from standardwebhooks import Webhook

import handlers
from receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"the receiver's test secret, 32 b").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"not the receiver's secret, 32 by").decode()
SAMPLES = json.loads((Path(__file__).parent / "samples.json").read_text())
FIRST_TYPE = next(iter(SAMPLES))


def cloud_event(event_type, data=None):
    """A CloudEvent as Herald sends it, with the catalog's sample `data` unless given."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"evt_{uuid.uuid4()}",
            "source": "https://example.com/platform",
            "type": event_type,
            "time": datetime.now(timezone.utc).isoformat(),
            "datacontenttype": "application/json",
            "data": SAMPLES[event_type] if data is None else data,
        }
    )


class ReceiverTest(unittest.TestCase):
    def setUp(self):
        # Each handler wrapped to record that it ran.
        self.calls = []

        def counted(event_type, handler):
            def run(event):
                self.calls.append(event_type)
                return handler(event)

            return run

        wrapped = {t: counted(t, h) for t, h in handlers.HANDLERS.items()}
        self.server = Receiver(("127.0.0.1", 0), SECRET, handlers=wrapped, quiet=True)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()

    def deliver(self, signed_body, webhook_id=None, secret=SECRET, sent_body=None, headers=None):
        """POSTs a body signed with `secret` (the body sent may differ from the one signed)."""
        webhook_id = webhook_id or f"dlv_{uuid.uuid4()}"
        now = datetime.now(timezone.utc)
        if headers is None:
            headers = {
                "webhook-id": webhook_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(secret).sign(webhook_id, now, signed_body),
            }
        body = signed_body if sent_body is None else sent_body
        request = urllib.request.Request(
            self.url,
            data=body.encode(),
            method="POST",
            headers={"content-type": "application/cloudevents+json", **headers},
        )
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def test_a_valid_signature_is_handled(self):
        status, body = self.deliver(cloud_event(FIRST_TYPE))
        self.assertEqual(status, 200)
        self.assertEqual(body["status"], "handled")
        self.assertEqual(self.calls, [FIRST_TYPE])

    def test_a_tampered_body_is_refused(self):
        signed = cloud_event(FIRST_TYPE)
        tampered = signed.replace(f'"type": "{FIRST_TYPE}"', f'"type": "{FIRST_TYPE}", "tampered": true')
        self.assertNotEqual(tampered, signed)
        status, _ = self.deliver(signed, sent_body=tampered)
        self.assertEqual(status, 401)
        self.assertEqual(self.calls, [])

    def test_another_secret_is_refused(self):
        status, _ = self.deliver(cloud_event(FIRST_TYPE), secret=OTHER_SECRET)
        self.assertEqual(status, 401)
        self.assertEqual(self.calls, [])

    def test_missing_signature_headers_are_refused(self):
        status, _ = self.deliver(cloud_event(FIRST_TYPE), headers={})
        self.assertEqual(status, 400)
        self.assertEqual(self.calls, [])

    def test_a_repeated_webhook_id_is_not_handled_twice(self):
        body = cloud_event(FIRST_TYPE)
        first = self.deliver(body, webhook_id="dlv_repeated")
        again = self.deliver(body, webhook_id="dlv_repeated")
        self.assertEqual(first[0], 200)
        self.assertEqual(again, (200, {"status": "duplicate", "webhook_id": "dlv_repeated"}))
        self.assertEqual(self.calls, [FIRST_TYPE])

    def test_each_event_reaches_its_handler(self):
        for event_type in SAMPLES:
            with self.subTest(event_type):
                self.calls.clear()
                status, body = self.deliver(cloud_event(event_type))
                self.assertEqual(status, 200)
                self.assertEqual((body["status"], body["type"]), ("handled", event_type))
                self.assertEqual(self.calls, [event_type])

    def test_the_audit_payload_format_reaches_the_handler(self):
        audit = json.dumps({"id": "evt_audit", "action": FIRST_TYPE, "data": SAMPLES[FIRST_TYPE]})
        status, body = self.deliver(audit)
        self.assertEqual((status, body["status"]), (200, "handled"))
        self.assertEqual(self.calls, [FIRST_TYPE])
{{failed_run_test}}

if __name__ == "__main__":
    unittest.main()
