"""An emulator of the PBX's API and of the call events it sends: tooling for tests and demos.

The receiver never imports it; it imports the receiver's pieces it shares (the command
line's server helpers, the event types).
"""
