"""The browser UI of `webUI.py`: handlers that call the library as the scripts do, and their Gradio layout.

`catalog` lists what the logs folder holds, `convert`, `tools` and `training` are plain functions (they
raise SvcError for anything a user can get wrong), `pitchplot` draws the pitch figure, and `app` wires
them to widgets and turns every error into a message on the page.
"""
