"""Forwarding: every stored event and every call, sent on to other webhooks (a CRM, say).

rules.py says where each message goes (--forward, --forward-rules), signing.py signs them as the
Standard Webhooks specification says, messages.py makes them (pure), and delivery.py is the
worker that sends what the outbox holds, retrying for hours. The outbox itself is in the store
(receiver/store/outbox.py): the messages an event causes are written in the commit that stores
the event, so an event answered 200 is as sure to be forwarded as it is to be kept.
"""
