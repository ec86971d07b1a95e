"""Built-in workloads: image classification and tables. Each plugs into the core through the
same extension points a user's code does (``data.preprocess``, ``train.model``)."""
