"""Export to TFLite stages and the on-device cascade runner."""
