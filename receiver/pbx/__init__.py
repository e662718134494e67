"""The PBX's API, as a client: its access token, and the receiver's subscriptions."""
