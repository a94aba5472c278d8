"""The HTTP server of flask_api.py: 4.1's two endpoints, a JSON API and streaming conversion over WebSocket.

Models are loaded once at start from the command line; a client names a loaded model, never a path.
"""
