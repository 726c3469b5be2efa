"""The command-line tools: ``train.py``, ``evaluate.py`` and ``export/to_tflite.py`` in the checkout,
``tf-fusionnet-train``, ``-evaluate`` and ``-export`` once the package is installed."""
