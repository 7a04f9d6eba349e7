"""Thin tornado handlers: translate HTTP and WebSocket to service calls and back."""
