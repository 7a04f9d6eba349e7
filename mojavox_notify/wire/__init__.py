"""What clients send and receive, one home per shape: its JSON Schema (served in /openapi.json
or /protocol.json), the rules a schema cannot say, and the conversion to and from the records.

| shape | home | checked by | built by |
|---|---|---|---|
| notification draft and payload | `notification.py` | `DraftCheck` | `to_payload` |
| broadcast body and payload | `broadcast.py` | `check_broadcast` | `to_broadcast_payload` |
| channel settings | `preferences.py` | `PreferencesCheck` | `preferences_payload` |
| push subscription | `push_subscription.py` | `check_push_subscription`, `check_endpoint_body` | |
| domain event | `event.py` | `EventCheck` | |
| topic key and membership update | `topic.py` | `check_topic_key`, `check_topic_update` | |
| socket frames | `frames.py` | `check_client_frame` | `SERVER_FRAMES` (the session's `_send`) |

`schema.py` holds the building blocks and the `Checker`; `input.py` the rules shared by shapes
(JSON storage can keep, plain text, `data`, action URLs, times).

A new field of the notification payload touches `notification.py` (its schema `NOTIFICATION`
and `to_payload`), the stored form in `model.to_document` when it is stored, and the browser
client's types (`clients/js`). openapi.py and frames.py take the schema from there.
"""
