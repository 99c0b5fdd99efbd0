"""A store's device fleet as data: the models of firmware-configs/<store>/ and what is
rendered from them (ESPHome YAML, ESPresense settings, broker password lines). Pure:
files are read and written by app/firmware.py, entropy is handed in."""
