"""A user's own table code: the preprocessing class and the model of the table example."""
